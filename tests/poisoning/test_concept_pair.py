"""`poison pair`: concept pairs with many clean images, captioned the way alt text names them."""

import pandas as pd
import pytest

from diffusion import data
from poisoning import concept_pair as pairs


def _corpus():
    rows = []
    for sub, names in (("transport-ground", ["taxi", "bus", "tram"]), ("animal-mammal", ["ox", "cat"]),
                       ("clothing", ["scarf"]), ("sky & weather", ["sun"]), ("food-fruit", ["pear"])):
        for name in names:
            for artist in ("twemoji", "openmoji", "notomono"):
                rows.append({"item_id": f"{artist}/{name}", "concept": name, "artist": artist, "subcategory": sub,
                             "licence": "x", "path64": f"{artist}/64/{name}.png"})
    return pd.DataFrame(rows)


def test_group_pair_labels_subcategories_and_captions_name_the_group():
    df = pairs.rows(pairs.PairConfig(), _corpus())
    assert dict(df.label.value_counts()) == {"vehicle": 9, "animal": 6, "clothing": 3, "weather": 3}
    assert "pear" not in set(df.concept)  # not in any group
    labels = data.match_concepts(df.caption.tolist(), sorted(set(df.label)))
    assert [sorted(set(df.label))[i] for i in labels] == df.label.tolist()  # training labels each row as its group
    assert not any("a animal" in c for c in df.caption)  # the article agrees with the group
    assert pairs.group_caption("ox", "animal", 0) == "ox, an animal"


def test_style_pair_labels_artists_and_caps_concepts():
    df = pairs.rows(pairs.PairConfig(pair="style", max_concepts=2), _corpus())
    assert df.concept.nunique() == 2 and set(df.label) == {"twemoji", "openmoji", "notomono"}
    assert all(c.endswith(f"emoji by {a}") for c, a in zip(df.caption, df.artist))


def test_a_corpus_without_the_pair_and_bad_fields_are_clear_errors():
    with pytest.raises(ValueError, match="no corpus image for vehicle"):
        pairs.rows(pairs.PairConfig(), _corpus()[lambda d: d.subcategory != "transport-ground"])
    with pytest.raises(ValueError, match="pair"):
        pairs.PairConfig(pair="colour")
    with pytest.raises(ValueError, match="judge_held_out"):
        pairs.PairConfig(judge_held_out=1.0)
    with pytest.raises(ValueError, match="max_concepts"):
        pairs.PairConfig(max_concepts=-1)
