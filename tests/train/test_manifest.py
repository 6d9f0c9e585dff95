"""--overwrite removes only what ftopt wrote (the run folder's manifest), and the earlier run's base/ with it."""

import json

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.spec.errors import FtoptError
from ftopt.train import manifest

runner = CliRunner()


def train(out, *args):
    return runner.invoke(app, ["train", "--out", str(out), "--max-steps", "1", "--eval-max-examples", "0", *args])


def test_overwrite_keeps_files_ftopt_did_not_write_and_removes_the_old_base(tmp_path):
    out = tmp_path / "run"
    r = train(out, "--lora-r", "4")  # random init + LoRA: the base is saved in base/
    assert r.exit_code == 0, r.output
    assert (out / "base" / "config.json").exists() and (out / "adapter_config.json").exists()
    listed = json.loads((out / manifest.MANIFEST_NAME).read_text())["files"]
    assert {"base", "adapter_model.safetensors", "steps.jsonl", "metrics.json"} <= set(listed)
    r = train(out, "--overwrite")  # full fine-tuning now: no base/, no adapter
    assert r.exit_code == 0, r.output
    assert not (out / "base").exists() and not (out / "adapter_config.json").exists()
    (out / "README.md").write_text("my notes\n")  # someone's own file in the run folder
    (out / "data").mkdir()
    r = train(out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "README.md").read_text() == "my notes\n" and (out / "data").is_dir()
    assert (out / "model.safetensors").exists()
    assert {"README.md", "data"} <= set(json.loads((out / manifest.MANIFEST_NAME).read_text())["foreign"])


def test_a_folder_of_someone_elses_files_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "README.md").write_text("model card\n")
    (model / "config.json").write_text("{}")
    for flags in ([], ["--overwrite"]):
        r = train(model, *flags)
        assert r.exit_code == 2 and "holds files ftopt did not write" in r.output and "README.md" in r.output
    assert (model / "README.md").read_text() == "model card\n" and (model / "config.json").read_text() == "{}"


def test_claim_after_a_crash_removes_unlisted_checkpoints_only(tmp_path):
    out = tmp_path / "run"
    manifest.claim(out, resume=False, overwrite=False)
    (out / "checkpoint-4").mkdir()  # written while the run went on, then a crash: never recorded
    (out / "notes.txt").write_text("x")
    manifest.claim(out, resume=False, overwrite=True)
    assert not (out / "checkpoint-4").exists() and (out / "notes.txt").exists()
    with pytest.raises(FtoptError, match="did not write"):
        manifest.claim(tmp_path, resume=False, overwrite=True)  # holds run/ but no manifest


def test_node_0_claims_a_shared_folder_where_another_node_already_logs(tmp_path):
    """A per-node run on a shared folder: node 1 may start its ranks (logs/rank1.log) before node 0 claims the
    folder; node 0 must not take those logs for someone else's files (it refused, and node 1 waited forever)."""
    out = tmp_path / "shared"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "rank1.log").write_text("node 1 started\n")
    manifest.claim(out, resume=False, overwrite=False)
    assert "logs" in manifest.read(out)["files"]
    other = tmp_path / "other"
    (other / "logs").mkdir(parents=True)
    (other / "logs" / "notes.txt").write_text("not a rank log")  # a logs/ folder of someone else's
    with pytest.raises(FtoptError, match="did not write"):
        manifest.claim(other, resume=False, overwrite=False)


def test_resume_into_someone_elses_folder_is_refused_too(tmp_path):
    """--resume in a folder with no run and no manifest wrote over its files (a model folder's config.json)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    r = train(model, "--resume")
    assert r.exit_code == 2 and "holds no run of ftopt's to continue" in r.output
    assert (model / "config.json").read_text() == "{}"
