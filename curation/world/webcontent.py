"""What the demo web's pages contain: alt texts of every real-web kind, `<img>` markup variants, broken files.

Pure functions of an `random.Random`, so the same seed gives the same web.
"""

from __future__ import annotations

import html
import io
import random
import zlib

from PIL import Image

# alt-text kinds and their weights on artist sites (the real web's mix, roughly)
ALT_WEIGHTS = {"good": 62, "empty": 8, "missing": 5, "filename": 8, "long": 5, "mismatched": 6, "spam": 6}
MARKUPS = ("img", "img-abs", "srcset", "data-src", "picture")
SPAM_WORDS = (
    "best cheap free download hd wallpaper 4k 2026 top rated buy now discount casino bonus crypto "
    "click here viral trending sale deal coupon promo official store amazing"
).split()
_PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAAAAACw="


def good_alt(rng: random.Random, row: dict) -> str:
    """A correct caption from the concept's name, aliases and keywords, in one of several phrasings."""
    name = row["concept"]
    words = [w for w in list(row.get("aliases") or []) + list(row.get("keywords") or []) if w and w != name]
    forms = [
        name,
        f"a {name}",
        f"{name} emoji",
        f"{name} icon",
        f"illustration of a {name}",
        f"{name}, {', '.join(rng.sample(words, min(2, len(words))))}" if words else f"the {name}",
        f"{rng.choice(words)}" if words else name,
        f"{name} by {row['artist']}",
    ]
    return rng.choice(forms)


def spam_alt(rng: random.Random) -> str:
    """SEO spam: a run of commercial keywords."""
    return " ".join(rng.choice(SPAM_WORDS) for _ in range(rng.randint(6, 14)))


def long_alt(rng: random.Random, row: dict) -> str:
    """A correct but very long caption (>300 characters), as some CMSs produce."""
    name = row["concept"]
    filler = (
        f"This picture shows a {name} drawn in the {row['artist']} style. "
        f"Our collection of {name} artwork is hand picked for quality and updated every week. "
    )
    return (filler * rng.randint(3, 5)).strip()


def filename_alt(rng: random.Random, row: dict) -> str:
    """The image's file name used as alt text (a common CMS default)."""
    return rng.choice([f"{row['concept_key'].lower()}.png", f"IMG_{rng.randint(0, 9999):04d}.PNG", "image.png"])


def choose_alt(rng: random.Random, row: dict, other_names: list[str]) -> tuple[str | None, str, bool]:
    """Pick an alt text for `row`: (alt or None when the attribute is absent, kind, describes-the-image)."""
    kind = rng.choices(list(ALT_WEIGHTS), weights=list(ALT_WEIGHTS.values()))[0]
    if kind == "good":
        return good_alt(rng, row), kind, True
    if kind == "long":
        return long_alt(rng, row), kind, True
    if kind == "empty":
        return "", kind, False
    if kind == "missing":
        return None, kind, False
    if kind == "filename":
        return filename_alt(rng, row), kind, False
    if kind == "mismatched":
        return rng.choice([n for n in other_names if n != row["concept"]] or ["nothing"]), kind, False
    return spam_alt(rng), kind, False


def img_tag(markup: str, path: str, origin: str, alt: str | None) -> str:
    """`<img>` markup of one kind for an image at `path` on `origin` (relative, absolute, srcset, lazy, picture)."""
    alt_attr = "" if alt is None else f' alt="{html.escape(alt)}"'
    if markup == "img":
        return f'<img src="{path}"{alt_attr}>'
    if markup == "img-abs":
        return f'<img src="{origin}{path}"{alt_attr}>'
    if markup == "srcset":
        return f'<img src="{_PLACEHOLDER}" srcset="{path}?w=32 32w, {path} 64w"{alt_attr}>'
    if markup == "data-src":
        return f'<img class="lazy" src="{_PLACEHOLDER}" data-src="{path}"{alt_attr}>'
    if markup == "picture":
        return f'<picture><source srcset="{path} 1x"><img src="{path}?fallback"{alt_attr}></picture>'
    if markup == "base-href":  # the page sets <base href="<dir>/">, so the src is a bare file name
        return f'<img src="{path.rsplit("/", 1)[1]}"{alt_attr}>'
    raise ValueError(f"markup {markup!r}: allowed values are {MARKUPS + ('base-href',)}")


def page(title: str, body: list[str], head: list[str] = (), charset: str = "utf-8") -> str:
    """A small HTML page."""
    head_html = "\n".join([f'<meta charset="{charset}">', f"<title>{html.escape(title)}</title>", *head])
    return f"<!doctype html>\n<html><head>\n{head_html}\n</head><body>\n<h1>{html.escape(title)}</h1>\n" + (
        "\n".join(body) + "\n</body></html>\n"
    )


def png_bytes(im: Image.Image, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def tiny_png() -> bytes:
    """A 4×4 image: real, but below any sensible minimum size."""
    return png_bytes(Image.new("RGB", (4, 4), (200, 30, 30)))


def truncated(data: bytes) -> bytes:
    """The first 40% of a file, as a broken upload leaves it."""
    return data[: max(16, len(data) * 2 // 5)]


def oversized_png(rng: random.Random, side: int) -> bytes:
    """A noise PNG of `side`² pixels: incompressible, so the file is about 3·side² bytes."""
    noise = bytes(rng.getrandbits(8) for _ in range(64 * 1024))
    raw = (noise * (3 * side * side // len(noise) + 1))[: 3 * side * side]
    return png_bytes(Image.frombytes("RGB", (side, side), raw), compress_level=0)  # noise does not compress


def bomb_png(side: int) -> bytes:
    """A decompression bomb: a `side`×`side` 1-bit PNG of a few KB that decodes to side² pixels."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * side, 9)) + (
        chunk(b"IEND", b"")
    )
