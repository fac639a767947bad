"""Downloads through the registries' own clients (``apt-get download``, ``pip download``), sha256
checks and archive extraction, all kept in one cache.

Cache layout (root: ``$SUPERPOSE_CACHE``, default ``~/.cache/superpose``)::

  downloads/<package>/<version>/<file>     what apt-get / pip fetched, checked against its sha256
  extracted/<file>/...                     the unpacked archive (a ``.complete`` marker ends it)
  tokenizers/gpt2/{encoder.json,vocab.bpe} see superpose.data.bpe

Neither apt-get download nor pip download needs root. Downloads land in a temporary folder first and
are moved into place only after the checksum matched, so an interrupted run never leaves a bad file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

CACHE_ENV = "SUPERPOSE_CACHE"


class FetchError(RuntimeError):
  """A download, checksum or extraction failed; the message says what to do about it."""


@dataclasses.dataclass(frozen=True)
class Package:
  source: str  # "apt" (a Debian binary package) or "pypi"
  name: str
  version: str
  sha256: str  # of the downloaded file
  sdist: bool = False  # pypi only: fetch the source archive rather than a wheel

  def __str__(self):
    return f"{self.source}:{self.name}={self.version}"


def cache_root(override: str | os.PathLike | None = None) -> pathlib.Path:
  root = override or os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "superpose"
  return pathlib.Path(root).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def have_apt() -> bool:
  return shutil.which("apt-get") is not None


def _safe(version: str) -> str:
  return version.replace(":", "%3a").replace("/", "_")


def fetch(pkg: Package, cache: pathlib.Path, pinned: bool = True) -> tuple[pathlib.Path, str]:
  """The package file in the cache, downloading it when missing; returns (path, sha256).

  ``pinned=False`` (apt only) takes whatever version the archive offers now and skips the checksum:
  Debian replaces packages on point releases, and this keeps a build possible when a pinned version
  has gone. The build records the version and sha256 it actually used.
  """
  dest = cache / "downloads" / pkg.name / (_safe(pkg.version) if pinned else "current")
  have = sorted(p for p in dest.glob("*") if p.is_file()) if dest.exists() else []
  if have:
    digest = sha256_file(have[0])
    if not pinned or digest == pkg.sha256:
      return have[0], digest
    have[0].unlink()  # corrupt or replaced: fetch again
  dest.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".tmp-") as tmp:
    tmp = pathlib.Path(tmp)
    try:
      if pkg.source == "apt":
        _apt_download(pkg, tmp, pinned)
      elif pkg.source == "pypi":
        _pip_download(pkg, tmp)
      else:
        raise ValueError(f"unknown package source {pkg.source!r}")
    except FetchError as e:
      raise FetchError(f"{e} Or put the file (sha256 {pkg.sha256}) into {dest} by hand.") from None
    files = [p for p in tmp.iterdir() if p.is_file()]
    if len(files) != 1:
      raise FetchError(f"{pkg}: expected one downloaded file, found {[p.name for p in files]}")
    digest = sha256_file(files[0])
    if pinned and digest != pkg.sha256:
      raise FetchError(
        f"{pkg}: sha256 mismatch for {files[0].name}: got {digest}, expected {pkg.sha256}. "
        "The registry serves a different file than the one recorded; check it before "
        "updating the expected checksum."
      )
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / files[0].name
    files[0].replace(target)
  return target, digest


def _run(cmd: list[str], cwd: pathlib.Path, what: str, hint: str) -> None:
  try:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  except FileNotFoundError as e:
    raise FetchError(f"{what}: {cmd[0]} is not available ({e}). {hint}") from None
  if r.returncode != 0:
    lines = [
      ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip() and not ln.startswith("W:")
    ]
    raise FetchError(
      f"{what} failed: {' | '.join(lines[-4:]) or 'exit ' + str(r.returncode)}. {hint}"
    )


def _apt_download(pkg: Package, dest: pathlib.Path, pinned: bool) -> None:
  spec = f"{pkg.name}={pkg.version}" if pinned else pkg.name
  hint = (
    "If apt-get cannot locate the package, its lists may be empty: run `apt-get update` (as root). "
    "If only this version is gone from the archive, rebuild with --unpinned."
  )
  _run(["apt-get", "download", "-q", spec], dest, f"apt-get download {spec}", hint)


def _pip_download(pkg: Package, dest: pathlib.Path) -> None:
  spec = f"{pkg.name}=={pkg.version}"
  cmd = [
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--disable-pip-version-check",
    "-q",
    "-d",
    str(dest),
  ]
  cmd += ["--no-binary", ":all:"] if pkg.sdist else ["--only-binary", ":all:"]
  hint = "Check the network access to PyPI (or PIP_INDEX_URL)."
  try:
    _run(cmd + [spec], dest, f"pip download {spec}", hint)
  except FetchError:
    if not pkg.sdist:
      raise
    # pip prepares an sdist's metadata; old setup.py files fail in an isolated build environment
    # ("invalid command 'bdist_wheel'") but work with the local setuptools + wheel.
    _run(
      cmd + ["--no-build-isolation", spec],
      dest,
      f"pip download {spec}",
      hint + " (needs setuptools and wheel)",
    )


def extract(archive: pathlib.Path, cache: pathlib.Path) -> pathlib.Path:
  """Unpack ``archive`` (.deb, .whl/.zip, .tar.*) once under ``cache/extracted``; returns the
  folder."""
  dest = cache / "extracted" / archive.name
  if (dest / ".complete").exists():
    return dest
  if dest.exists():
    shutil.rmtree(dest)  # a previous extraction was interrupted
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
  try:
    name = archive.name
    if name.endswith(".deb"):
      _extract_deb(archive, tmp)
    elif name.endswith((".whl", ".zip")):
      with zipfile.ZipFile(archive) as z:
        z.extractall(tmp)
    elif ".tar" in name or name.endswith(".tgz"):
      with tarfile.open(archive) as t:
        _untar(t, tmp)
    else:
      raise FetchError(f"do not know how to unpack {archive}")
    (tmp / ".complete").touch()
    tmp.rename(dest)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dest


def _untar(t: tarfile.TarFile, dest: pathlib.Path) -> None:
  members = [m for m in t.getmembers() if m.isfile() or m.isdir() or m.issym() or m.islnk()]
  if any(m.name.startswith("/") or ".." in pathlib.PurePosixPath(m.name).parts for m in members):
    raise FetchError(f"{t.name}: refusing an archive with absolute or '..' paths")
  # Python >= 3.11.4 also checks link targets and permissions ("data" filter).
  kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
  t.extractall(dest, members=members, **kwargs)


def read_ar(path: pathlib.Path) -> dict[str, bytes]:
  """Members of a Unix ``ar`` archive (the container of a .deb)."""
  data = path.read_bytes()
  if not data.startswith(b"!<arch>\n"):
    raise FetchError(f"{path} is not an ar archive (a .deb starts with '!<arch>')")
  members, pos = {}, 8
  while pos + 60 <= len(data):
    header = data[pos : pos + 60]
    name = header[:16].decode().strip().rstrip("/")
    size = int(header[48:58].decode().strip())
    members[name] = data[pos + 60 : pos + 60 + size]
    pos += 60 + size + (size & 1)  # members are padded to an even offset
  return members


def _extract_deb(deb: pathlib.Path, dest: pathlib.Path) -> None:
  if shutil.which("dpkg-deb"):
    _run(
      ["dpkg-deb", "-x", str(deb), str(dest)],
      dest,
      f"dpkg-deb -x {deb.name}",
      "Is the .deb complete?",
    )
    return
  # No dpkg (e.g. macOS with a .deb copied in): the data member is a plain tar archive.
  members = read_ar(deb)
  data = next((k for k in members if k.startswith("data.tar")), None)
  if data is None:
    raise FetchError(f"{deb} has no data.tar member (members: {sorted(members)})")
  if data.endswith(".zst"):
    raise FetchError(
      f"{deb}: {data} needs zstd, which Python's tarfile cannot read; install dpkg-deb"
    )
  with tarfile.open(fileobj=io.BytesIO(members[data]), mode="r:*") as t:
    _untar(t, dest)
