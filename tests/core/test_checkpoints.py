"""One checkpoint reader: every loader of a torch file goes through `checkpoints.load`, so a junk or truncated file
is the same one-line error (naming the file and what to do) everywhere."""

import os
import re
from pathlib import Path

import pytest
import torch

from curation.score import aesthetic
from diffusion import classifier
from mithridate.core import checkpoints
from poisoning import perceptual

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("curation", "diffusion", "poisoning", "reports", "mithridate")


def test_only_the_checkpoints_module_calls_torch_load():
    callers = sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                     if re.search(r"\btorch\.load\(", p.read_text(encoding="utf-8")))
    assert callers == ["mithridate/core/checkpoints.py"]


def _head(path: Path) -> None:  # LAION's linear head layout
    torch.save({"weight": torch.randn(1, 8), "bias": torch.zeros(1)}, path)


def _classifier(path: Path) -> None:
    classifier.save_classifier(classifier.LatentClassifier(num_classes=2, width=8, depth=1), path)


def _alexnet_features(path: Path) -> None:  # the part of a torchvision AlexNet state dict LPIPS reads
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    state = {}
    for i, (out, inp, k) in convs.items():
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = torch.randn(out, inp, k, k) * 0.01, torch.zeros(out)
    torch.save(state, path)


# (writer of a good file, loader, what the error calls a bad file, a piece of its remedy)
READERS = {
    "aesthetic head": (_head, aesthetic.load_head, "not a loadable torch state dict", "mithridate aesthetic train"),
    "latent classifier": (_classifier, classifier.load_classifier, "not a torch checkpoint",
                          "mithridate classifier train"),
    "lpips backbone": (_alexnet_features, perceptual.load, "not a readable torch file", "lpips_backbone="),
}


@pytest.mark.parametrize("damage", ["junk", "truncated"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_broken_file_is_one_line_naming_it_and_the_remedy(reader, damage, tmp_path):
    write, load, unreadable, remedy = READERS[reader]
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    write(good)
    data = good.read_bytes()
    bad.write_bytes(os.urandom(4000) if damage == "junk" else data[: len(data) // 2])
    with pytest.raises(ValueError) as err:
        load(bad)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: {unreadable} (truncated or not a mithridate checkpoint"), msg
    assert remedy in msg, msg


def test_the_readers_still_read_good_files_and_refuse_missing_ones(tmp_path):
    _head(tmp_path / "head.pt")
    assert aesthetic.load_head(tmp_path / "head.pt").kind == "linear"
    _classifier(tmp_path / "clf.pt")
    model, meta = classifier.load_classifier(tmp_path / "clf.pt")
    assert meta["format"] == classifier.FORMAT and model.config["width"] == 8
    _alexnet_features(tmp_path / "alex.pth")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert perceptual.load(tmp_path / "alex.pth")(x, x).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(FileNotFoundError, match="head file not found"):
        aesthetic.load_head(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):
        classifier.load_classifier(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match=r"lpips_backbone='.*nope.pt': file not found"):
        perceptual.load(tmp_path / "nope.pt")


def test_a_folder_or_a_non_dict_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="a folder, not a torch checkpoint; give the classifier.pt inside it"):
        classifier.load_classifier(tmp_path)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="holds a Tensor; expected a torchvision AlexNet state dict"):
        perceptual.load(tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="expected a state dict, got Tensor"):
        aesthetic.load_head(tmp_path / "tensor.pt")
    assert checkpoints.load(tmp_path / "tensor.pt", "unused").shape == (3,)
