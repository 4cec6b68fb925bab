"""The evaluation text: the Jargon File's prose, from Debian's jargon-text package, pinned by sha256."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from gaplab import provision
from gaplab.provision import SetupError
from gaplab.spec.config import CACHE_DIR

QUALITY_DIR = CACHE_DIR / "quality"  # the evaluation text and the (large, temporary) logits files


@dataclass(frozen=True)
class TextSource:
    name: str
    package: str  # Debian binary package, fetched with `apt-get download`
    version: str
    deb_sha256: str
    member: str  # gzipped text inside the package's data.tar
    text_sha256: str  # of that text, unzipped
    sections: tuple[tuple[str, str], ...]  # (heading that starts a section, line that ends it)
    sha256: str  # of the excerpt gaplab scores
    license: str
    citation: str


EVAL_TEXT = TextSource(
    name="jargon-file-4.4.7-prose",
    package="jargon-text", version="4.4.7-4.1",
    deb_sha256="17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
    member="./usr/share/doc/jargon-text/jargon.txt.gz",
    text_sha256="40dfb4b98191a670a09a183d5798d50f243d23fdbd1495dcc0aca2ce5895ba97",
    # The prose parts: chapters 1-12 and appendices A-C (the lexicon itself is left out).
    sections=(("Chapter 1. Hacker Slang and Hacker Culture", "Part II. The Jargon Lexicon"),
              ("Appendix A. Hacker Folklore", "Bibliography")),
    sha256="8e9dbc2cd6df6c66fed3defd1dc9963861704a45b95fdfa65a98dad2268276f8",
    license="public domain (Debian's copyright file for jargon-text: \"This document (the Jargon File) "
            "is in the public domain, to be freely used, shared, and modified\")",
    citation="The Jargon File, version 4.4.7, 29 Dec 2003, ed. Eric S. Raymond",
)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _deb_member(deb: Path, member: str) -> bytes:
    """One file out of a .deb (an ar archive holding data.tar.*), without dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise SetupError(f"{deb}: not a Debian package (no ar header); delete it and retry")
    pos = 8
    while pos + 60 <= len(raw):
        name = raw[pos:pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48:pos + 58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are padded to an even offset
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                f = tar.extractfile(member)
                if f is None:
                    raise SetupError(f"{deb}: {member} is not a regular file")
                return f.read()
    raise SetupError(f"{deb}: no data.tar member; delete it and retry")


def _apt_download(src: TextSource) -> Path:
    """The pinned .deb, from the cache or from Debian's archive (apt-get checks its signature)."""
    dest = CACHE_DIR / "downloads" / f"{src.package}_{src.version}_all.deb"
    if dest.exists() and provision.sha256(dest) == src.deb_sha256:
        return dest
    if not shutil.which("apt-get"):
        raise SetupError(f"the evaluation text is Debian's {src.package} {src.version} package and apt-get is "
                         f"not installed here; copy {dest.name} into {dest.parent} and retry")
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"gaplab: downloading {src.package}={src.version} from Debian (the evaluation text)", flush=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = ["apt-get", "download", f"{src.package}={src.version}"]
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if res.returncode != 0 and os.geteuid() == 0:  # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        got = list(Path(tmp).glob("*.deb"))
        if res.returncode != 0 or not got:
            why = (res.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise SetupError(f"apt-get could not download {src.package}={src.version} ({why}); "
                             "run 'apt-get update' and retry")
        digest = provision.sha256(got[0])
        if digest != src.deb_sha256:
            raise SetupError(f"{got[0].name} has sha256 {digest}, expected {src.deb_sha256} (pinned)")
        got[0].rename(dest)
    return dest


def _excerpt(text: str, sections: tuple[tuple[str, str], ...]) -> str:
    lines = text.split("\n")

    def norm(line: str) -> str:  # the file writes some headings with no-break spaces
        return " ".join(line.split())

    out: list[str] = []
    for start, end in sections:
        # a heading starts at column 0; the table of contents repeats it indented
        i = next((k for k, s in enumerate(lines) if s[:1].strip() and norm(s) == start), None)
        j = next((k for k in range(i + 1, len(lines)) if norm(lines[k]) == end), None) if i is not None else None
        if i is None or j is None:
            raise SetupError(f"evaluation text: section {start!r} .. {end!r} not found")
        out += [s.rstrip() for s in lines[i:j]]
    return "\n".join(out).strip() + "\n"


def eval_text(src: TextSource = EVAL_TEXT) -> Path:
    """The evaluation text as a plain file in the cache, checked against its pinned sha256."""
    target = QUALITY_DIR / f"{src.name}.txt"
    if target.exists() and provision.sha256(target) == src.sha256:
        return target
    deb = _apt_download(src)
    full = gzip.decompress(_deb_member(deb, src.member))
    if _sha256_bytes(full) != src.text_sha256:
        raise SetupError(f"{deb.name}: {src.member} has sha256 {_sha256_bytes(full)}, expected {src.text_sha256}")
    excerpt = _excerpt(full.decode("utf-8"), src.sections).encode()
    if _sha256_bytes(excerpt) != src.sha256:
        raise SetupError(f"evaluation text excerpt has sha256 {_sha256_bytes(excerpt)}, expected {src.sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(excerpt)
    tmp.rename(target)
    target.with_suffix(".json").write_text(json.dumps(asdict(src), indent=1))
    return target
