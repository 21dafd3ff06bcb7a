"""Hub downloads checked against the sha256 the hub publishes, computed while they download, through
the real huggingface_hub and a LocalHub on 127.0.0.1."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from lm_eval_fairdyn.offline.hub import LocalHub

pytestmark = pytest.mark.slow  # each test downloads through the real huggingface_hub in a process of its own

# Downloads one revision with fetch.download and says, per LFS file, how much of it the following
# hash had read before the download returned and whether its digest was used; and which files
# were read again after the download (fetch.file_sha256).
DOWNLOAD = """
import json, sys
from pathlib import Path
from lm_eval_fairdyn.dynamics import fetch
reads, follows = [], {}
whole = fetch.file_sha256
fetch.file_sha256 = lambda path: reads.append(Path(path).name) or whole(path)
own_result = fetch.FollowingHash.result
def result(self, path):
    digest = own_result(self, path)
    follows[Path(path).name] = {"while": self.read_while_downloading, "size": path.stat().st_size,
                                "used": digest is not None}
    return digest
fetch.FollowingHash.result = result
fetched = fetch.download("EleutherAI/tiny", "step0", retries=1, wait_s=0.1)
print(json.dumps({"reads": reads, "follows": follows, "folder": str(fetched.folder)}))
"""


def download(hub, home) -> dict:
    env = dict(
        os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1"
    )
    proc = subprocess.run([sys.executable, "-c", DOWNLOAD], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture
def hub_root(tiny_checkpoints, tmp_path):
    root = tmp_path / "hub"
    shutil.copytree(tiny_checkpoints / "step0", root / "EleutherAI" / "tiny" / "step0")
    return root


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_weights_sha256_is_computed_while_they_download(hub_root, tmp_path):
    """At 8 MB/s the 13 MB weights take over a second to arrive: most of their bytes are hashed
    before the download returns, the digest is used, and no file is read again afterwards."""
    weights = hub_root / "EleutherAI" / "tiny" / "step0" / "model.safetensors"
    with LocalHub(hub_root, bandwidth=8e6) as hub:
        seen = download(hub, tmp_path / "hf")
        assert hub.downloads("*/step0/model.safetensors") == 1
    follow = seen["follows"]["model.safetensors"]
    assert follow["used"] and follow["size"] == weights.stat().st_size
    assert follow["while"] >= follow["size"] // 2, follow
    assert seen["reads"] == []
    folder = tmp_path / "hf" / "hub" / "models--EleutherAI--tiny" / "snapshots"
    assert sha256(next(folder.glob("*/model.safetensors"))) == sha256(weights)


def test_a_wrong_digest_is_read_again_before_the_file_is_removed_and_downloaded_again(hub_root, tmp_path):
    """The first answer has every byte but one right: the following hash disagrees with the hub,
    one read of the file confirms it, the blob leaves the cache and the second download is whole
    (its digest again from the following, no read)."""
    weights = hub_root / "EleutherAI" / "tiny" / "step0" / "model.safetensors"
    with LocalHub(hub_root) as hub:
        hub.fail("EleutherAI/tiny/step0/model.safetensors", times=1, kind="corrupt")
        seen = download(hub, tmp_path / "hf")
        assert hub.downloads("*/step0/model.safetensors") == 2
    assert seen["reads"] == ["model.safetensors"]
    assert seen["follows"]["model.safetensors"]["used"]
    blobs = tmp_path / "hf" / "hub" / "models--EleutherAI--tiny" / "blobs"
    assert sha256(blobs / sha256(weights)) == sha256(weights)
    assert all(sha256(p) == p.name for p in blobs.iterdir() if len(p.name) == 64)
