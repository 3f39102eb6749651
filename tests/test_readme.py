"""Every Python block of README.md runs, as a new user would run them (from a checkout's root)."""

import re
import shutil
from pathlib import Path

from embeddings.feature_store import REPO

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_python_block_in_the_readme_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    # the consumer's example reads what the API example publishes: it runs last, as a consumer comes after a publish
    blocks.sort(key=lambda block: 'REPO = Path("feature_repo")' in block)
    assert len(blocks) >= 3
    shutil.copytree(REPO, tmp_path / "feature_repo", ignore=shutil.ignore_patterns("data", "__pycache__"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    assert namespace["manifest"]["rows"]["user_embeddings"] > 0
    assert len(namespace["vector"]) == 64 and len(namespace["scores"]) == len(namespace["frame"])
    assert len(namespace["training"]) == 2 and "embedding" in namespace["training"]
    assert namespace["dim"] == 64 and namespace["online"]["embedding"][0] is not None
