"""Where a dataset's original files come from; the package ships none of them.

In this order: a folder the caller names (``<name>_dir``, e.g. through lm-eval's ``--metadata``),
the folder in the dataset's environment variable, the local cache (``$FAIRDYN_CACHE``, default
``~/.cache/lm_eval_fairdyn``), a download from the upstream repository pinned to a commit, each
file checked against its upstream git blob SHA-1 and cached with the upstream license.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lm_eval_fairdyn.core.errors import UserInputError
from lm_eval_fairdyn.core.files import atomic_write_bytes

ENV_CACHE = "FAIRDYN_CACHE"
_RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"


class DataError(UserInputError, ValueError):
    """A data file that cannot be used; the message names file and line."""


class DataUnavailable(UserInputError, FileNotFoundError):
    """A dataset's files could be found neither locally nor upstream."""


def git_blob_sha1(data: bytes) -> str:
    """SHA-1 of ``data`` as git stores it: sha1(b"blob <len>\\0" + data)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lm_eval_fairdyn"
    )
    return Path(root)


@dataclass(frozen=True)
class Upstream:
    """A dataset's pinned upstream: ``github`` is owner/name, ``data_dir`` the folder of its files
    inside the repository, ``argument`` and ``env`` the names a user sets the local folder by.
    ``subfolders``: where else inside a user's folder the files may lie (a clone's layout)."""

    name: str
    github: str
    commit: str
    data_dir: str
    argument: str
    env: str
    unavailable: type[Exception] = DataUnavailable
    invalid: type[Exception] = DataError
    subfolders: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"https://github.com/{self.github}"

    def _in_folder(self, folder: Path, needed) -> Path | None:
        for candidate in (folder, *(folder / sub for sub in self.subfolders)):
            if all((candidate / n).is_file() for n in needed):
                return candidate
        return None

    def download(self, target: Path, names, checksums: dict, timeout: float = 30.0) -> None:
        """Fetch the named files and the license, verify their blob SHA-1s, write atomically."""
        target.mkdir(parents=True, exist_ok=True)
        for name in [*names, "LICENSE"]:
            path = name if name == "LICENSE" else f"{self.data_dir}/{name}"
            url = _RAW_URL.format(repo=self.github, commit=self.commit, path=path)
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URL)
                data = response.read()
            if git_blob_sha1(data) != checksums[name]:
                raise self.invalid(f"{url}: checksum mismatch (expected git blob {checksums[name]})")
            atomic_write_bytes(target / name, data)

    def resolve(self, folder, needed: list[str], checksums: dict, download: bool = True) -> Path:
        """The folder holding every file in ``needed``, by the order in the module docstring."""
        for source, given in ((self.argument, folder), (self.env, os.environ.get(self.env))):
            if given:
                given = Path(given).expanduser()
                found = self._in_folder(given, needed)
                if found is None:
                    missing = [n for n in needed if not (given / n).is_file()]
                    raise self.unavailable(
                        f"{source}={given} lacks {', '.join(missing)}; it must hold the {self.name} files "
                        f"{', '.join(needed)} from {self.url}/tree/{self.commit}/{self.data_dir}"
                    )
                return found
        cached = cache_dir() / self.name.lower() / self.commit[:12]
        if all((cached / n).is_file() for n in needed):
            return cached
        reason = "downloads disabled"
        if download:
            try:
                self.download(cached, [n for n in needed if not (cached / n).is_file()], checksums)
                return cached
            except OSError as err:  # offline, DNS, HTTP errors
                reason = f"download failed: {err}"
        raise self.unavailable(
            f"{self.name} files not found ({reason}). Set the environment variable {self.env} to a "
            f"folder holding {', '.join(needed)} (from {self.url}, commit {self.commit}, "
            f"folder {self.data_dir}), pass it with lm-eval's --metadata "
            f'\'{{"{self.argument}": "/path"}}\', or run once online to cache them in {cached}.'
        )
