"""CLI: the documented JSON schema and one clear line with exit code 2 for bad input."""

import json
import re

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app

runner = CliRunner()


# plan llama-2-7b on one 8 x A100 node with the formulas alone (these tests are not about the trace's confirmation)
PLAN_7B_NODE = ("plan", "--method", "analytic", "--model", "llama-2-7b", "--gpu", "a100-80g", "--gpus", "8")


def run(*args):
    return runner.invoke(app, list(args))


def test_estimate_json_schema():
    r = run("estimate", "--model", "llama-2-7b", "--gpu", "a100-80g", "--lora-r", "8", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert isinstance(d["peak_bytes_per_gpu"], int) and isinstance(d["fits"], bool)
    assert sum(d["breakdown"].values()) == d["peak_bytes_per_gpu"]
    assert d["step_seconds"] > 0 and d["combination"]["lora_r"] == 8


def test_plan_json_schema(tmp_path):
    out = tmp_path / "plan.json"
    r = run(
        *PLAN_7B_NODE,
        "--json",
        "--out",
        str(out),
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert set(d["recommended"]) >= {"gc", "lora_r", "zero", "offload", "attn"}
    c = d["candidates"][0]
    assert set(c) >= {"gc", "lora_r", "zero", "offload", "attn", "peak_bytes_per_gpu", "fits", "epoch_seconds"}
    assert json.loads(out.read_text()) == d


def test_plan_table():
    r = run(
        "plan", "--method", "analytic", "--model", "llama-2-7b", "--gpu", "a100-80g", "--gpus", "8", "--seq-len", "2048"
    )
    assert r.exit_code == 0, r.output
    assert "Recommended:" in r.output and "LoRA" in r.output


@pytest.mark.parametrize(
    "args,fragment",
    [
        (("estimate", "--model", "llama-2-8b"), "Did you mean"),
        (("estimate", "--model", "/nonexistent/config.json"), "does not exist"),
        (("estimate", "--gpu", "a100"), "Unknown GPU"),
        (("estimate", "--seq-len", "0"), "--seq-len: Input should be greater than 0 (got 0)"),  # the flag typed
        (("estimate", "--micro-batch", "-1"), "--micro-batch:"),
        (("estimate", "--offload", "all", "--zero", "2"), "needs ZeRO stage 3"),
        (("estimate", "--offload", "optimizer"), "needs a ZeRO stage"),
        (("estimate", "--attn", "xformers"), "--attn must be one of"),
        (("estimate", "--precision", "int4"), "--precision must be one of"),
        (("estimate", "--lora-r", "8", "--lora-targets", "nope"), "candidates: q_proj"),
        (
            ("estimate", "--gpu", "t4", "--precision", "bf16-mixed"),
            "t4 cannot run bf16 (no bf16 units, compute capability 7.5)",
        ),
        (
            ("estimate", "--gpu", "v100-32g", "--precision", "fp16-mixed", "--attn", "flash"),
            "v100-32g cannot run flash",
        ),
        (("estimate", "--gpu", "cpu", "--precision", "fp32", "--attn", "flash"), "flash attention needs a CUDA GPU"),
        (("plan", "--host-ram", "lots"), "--host-ram must be a positive size such as 1.5TiB"),
        (("estimate", "--host-ram", "-2TiB"), "--host-ram must be a positive size"),
        (("plan", "--currency", ""), "--currency is empty"),
        (("plan", "--calibration", "/nonexistent/cal.json"), "Cannot read the calibration file"),
        (("plan", "--max-hours", "0"), "--max-hours must be a positive number of hours, got 0.0"),
        (("demo", "--quality-target", "exact>=x"), "--quality-target must look like"),  # before the sweep, not after
        (("demo", "--target-gpu", "a100x"), "Unknown GPU"),
        (
            ("estimate", "--model", "llama-2-7b", "--lora-r", "99999999999"),
            "--lora-r 99999999999 is larger than 4096, the smallest dimension of the linears LoRA wraps in llama "
            "(q_proj is 4096 x 4096); give a rank up to 4096.",
        ),
        (("plan", "--model", "tiny-llama", "--lora-r", "65"), "--lora-r 65 is larger than 64"),  # k_proj: 128 x 64
        (("estimate", "--model", "tiny-llama", "--lora-r", "65", "--lora-targets", "all-linear"), "larger than 64"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, fragment):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert fragment in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,said",
    [
        (("train", "--max-steps", "0"), "--max-steps must be positive, or -1 to run the epochs; got 0"),
        (("bench", "--max-steps", "0"), "--max-steps must be positive, or -1 to run the epochs; got 0"),
        (
            ("train", "--lora-r", "4", "--lora-dropout", "1"),
            "--lora-dropout is the share of each adapter input zeroed, so it must be at least 0 and below 1, got 1.0",
        ),
        (
            ("estimate", "--lora-dropout", "0.1"),
            "--lora-dropout=0.1 drops the LoRA adapters' input, so it needs LoRA (--lora-r > 0)",
        ),
        (("estimate", "--lora-targets", "q_proj"), "--lora-targets were given but --lora-r is 0 (full fine-tuning)"),
        (("train", "--eval-data", "x.jsonl"), "--eval-data x.jsonl needs --data: the built-in task holds out"),
    ],
)
def test_a_validators_own_sentence_names_the_flag_typed(tmp_path, args, said):
    """The validators serve the flags and the plan, run and grid files alike; on the command line their sentences
    named the field (max_steps, lora_dropout) instead of the flag the user typed."""
    out = ("--out", str(tmp_path / "out")) if args[0] != "estimate" else ()
    r = run(*args, *out)
    assert r.exit_code == 2 and r.output.startswith(f"error: {said}"), r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_files_values_are_named_by_their_fields(tmp_path):
    """The same sentences about a plan or grid file name its fields, which is what the file holds."""
    from ftopt.planner import resolve
    from ftopt.spec import load_hardware

    hw = load_hardware("cpu")
    doc = resolve.new_run(hw, resolve.model_ref("tiny-llama", weights=False), resolve.setup(hw), resolve.combination())
    doc = doc.to_json()
    doc["schedule"]["max_steps"] = 0
    (tmp_path / "run.json").write_text(json.dumps(doc))
    r = run("train", "--plan", str(tmp_path / "run.json"), "--out", str(tmp_path / "out"))
    assert r.exit_code == 2 and "max_steps must be positive" in r.output and "--max-steps" not in r.output, r.output
    (tmp_path / "grid.yaml").write_text("combinations:\n  - {lora_r: 4, lora_dropout: 1}\n")
    r = run("bench", "--grid", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "b"))
    assert r.exit_code == 2 and "lora_dropout is the share of each adapter input" in r.output, r.output
    assert "--lora-dropout" not in r.output


def test_malformed_and_non_decoder_configs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    enc = tmp_path / "enc.json"
    enc.write_text('{"model_type": "bert"}')
    for path, frag in ((bad, "not valid JSON"), (enc, "not a decoder-only")):
        r = run("estimate", "--model", str(path))
        assert r.exit_code == 2 and frag in r.output


@pytest.mark.parametrize(
    "args,what",
    [
        (("estimate", "--model", "{f}"), "The model config"),
        (("estimate", "--gpu", "{f}"), "The hardware file"),
        (("plan", "--method", "analytic", "--calibration", "{f}"), "The calibration file"),
        (("train", "--plan", "{f}"), "The plan"),
        (("bench", "--grid", "{f}"), "The grid"),
        (("bench", "--data", "{f}", "--out", "{out}"), "The data"),
        (("preview", "--data", "{f}"), "The data"),
    ],
)
def test_a_binary_file_where_text_belongs_is_one_line(tmp_path, args, what):
    """A file that is not UTF-8 (a checkpoint or an archive given by mistake) ended each of these in a traceback."""
    f = tmp_path / "given.json"
    f.write_bytes(b"\xff\xfe\x00\x01")
    r = run(*(a.format(f=f, out=tmp_path / "out") for a in args))
    assert r.exit_code == 2, r.output
    assert f"{what} {f} is not a UTF-8 text file" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("cmd", [("estimate", "--gpu"), ("plan", "--gpu"), ("demo", "--target-gpu")])
def test_a_folder_or_other_file_given_as_the_hardware_is_named_as_such(tmp_path, monkeypatch, cmd):
    """It said "Unknown GPU 'adir'. Known: ...", as if a preset name had been mistyped."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "gpu.yaml").write_text("name: x\n")
    (tmp_path / "cpu").mkdir()  # a folder named as a preset: the preset is meant
    assert run("estimate", "--gpu", "cpu").exit_code == 0
    for given, kind in (("adir", "a folder"), ("gpu.yaml", "a file without the .json suffix")):
        r = run(*cmd, given)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert r.output.startswith(f"error: '{given}' is {kind}, so neither a hardware preset nor a hardware file; ")
        assert r.output.rstrip().endswith("or a hardware .json file.") and "Unknown GPU" not in r.output


def test_a_hardware_file_of_another_json_type_is_named_as_such(tmp_path):
    f = tmp_path / "gpu.json"
    f.write_text("[1, 2]")
    r = run("estimate", "--gpu", str(f))
    assert r.exit_code == 2 and f"The hardware file {f} must be a JSON object, not list." in r.output


def test_seq_len_beyond_positions_warns():
    r = run("estimate", "--model", "llama-2-7b", "--seq-len", "8192")
    assert r.exit_code == 0 and "exceeds the model's 4096 positions" in r.output


def test_host_ram_and_currency_reach_the_plan():
    """70B full fine-tuning on 8 x A100: with the default 1 TiB of host RAM the offloaded states do not fit;
    with --host-ram 1.5TiB they do. Costs carry the currency."""
    base = (
        "plan",
        "--method",
        "analytic",
        "--model",
        "llama-2-70b",
        "--gpu",
        "a100-80g",
        "--gpus",
        "8",
        "--full-only",
        "--json",
        "--cost-per-gpu-hour",
        "3",
        "--currency",
        "JPY",
    )
    small, big = (json.loads(run(*base, *extra).output) for extra in ((), ("--host-ram", "1.5TiB")))
    assert small["recommended"] is None and big["recommended"] is not None
    assert small["host_memory_bytes"] == 2**40 and big["host_memory_bytes"] == int(1.5 * 2**40)
    assert big["currency"] == "JPY" and big["candidates"][0]["cost"] > 0
    assert run(*base[:-5], "--host-ram", "2048").exit_code == 0  # a bare number is GiB


def test_estimate_and_plan_print_the_calibration_used(tmp_path):
    r = run("estimate", "--gpu", "a100-80g", "--lora-r", "8")
    assert "time model: uncalibrated for a100-80g" in r.output
    from ftopt.planner.calibration_store import calibrate_and_store
    from ftopt.spec import load_hardware

    hw = load_hardware("a100-80g")
    rows = [
        {
            "status": "ok",
            "key": f"c{i}",
            "label": f"c{i}",
            "gpus": 1,
            "combination": {"lora_r": i + 1},  # four distinct combinations
            "sweep": {"precision": "fp32"},
            "measured": {"peak_bytes_per_gpu": 1, "step_seconds": 0.1 * (i + 1) / 0.3 + 0.01},
            "predicted": {
                "analytic": {"flops_per_step": 0.1 * (i + 1) * hw.flops_for("fp32"), "kernels_per_step": 1000}
            },
        }
        for i in range(4)
    ]
    _, _, path = calibrate_and_store(rows, hw, "/runs/x.jsonl", "llama-2-7b")
    r = run("plan", "--method", "analytic", "--gpu", "a100-80g", "--gpus", "8")
    assert "time model: calibrated, 4 runs of 4 points on a100-80g (llama-2-7b)" in r.output
    d = json.loads(run("estimate", "--gpu", "a100-80g", "--json", "--calibration", str(path)).output)
    assert d["calibration"]["file"] == str(path) and d["calibration"]["runs"] == 4


def test_plan_without_dataset_tokens_quotes_steps_and_1k_samples():
    r = run(
        *PLAN_7B_NODE,
        "--cost-per-gpu-hour",
        "2",
    )
    assert "per 1k samples" in r.output and "cost (USD per 1k samples)" in r.output
    header = next(line for line in r.output.splitlines() if "combination" in line)
    assert "step" in header and "epoch" not in header and "total" not in header


def test_help_states_defaults_and_units():
    """Defaults written as "[default: ...]" in help texts must survive rendering (rich markup swallowed them)."""
    r = runner.invoke(app, ["plan", "--help"], env={"COLUMNS": "250"})
    out = " ".join(r.output.split())
    for text in (
        "GPUs (processes) per node [default: 1]",
        "times are per step and per 1k samples]",
        "host RAM per node for offloaded states, e.g. 1.5TiB or 768 (a number is GiB) [default: the preset's, 1 TiB]",
        "training-time budget in hours [default: no budget]",
        "[default: USD]",
    ):
        assert text in out, text


@pytest.mark.parametrize(
    "command",
    [["bench", "--max-steps", "1"], ["demo", "--steps", "1"], ["report", "R"], ["train", "--max-steps", "1"], ["plan"]],
)
def test_output_under_a_regular_file_is_one_line(tmp_path, command):
    f = tmp_path / "file"
    f.write_text("x")
    results = tmp_path / "r.jsonl"
    results.write_text('{"key": "a", "status": "ok", "label": "x", "measured": {}}\n')
    args = [str(results) if a == "R" else a for a in command]
    target = f / "sub" / ("plan.json" if command[0] == "plan" else "")
    r = run(*args, "--out", str(target))
    assert r.exit_code == 2, r.output
    assert "is a file" in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_version_and_help_state_defaults():
    from ftopt import __version__

    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output
    import typer

    cmd = typer.main.get_command(app)
    for name in ("estimate", "plan", "train", "bench"):
        params = {p.name: p for p in cmd.commands[name].params}
        assert "64 on cpu" in params["seq_len"].help  # hardware-derived defaults are shown in --help
        undocumented = [p.name for p in params.values() if not getattr(p, "help", None) and p.name != "results"]
        assert not undocumented, f"{name}: flags without help: {undocumented}"


def test_plan_on_t4_defaults_to_fp16_mixed_and_fp32_plans_skip_flash():
    """`plan --gpu t4` plans in a precision the T4 runs (not bf16), and an fp32 plan does not offer flash-attn."""
    r = run("plan", "--model", "tiny-llama", "--gpu", "t4", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["setup"]["precision"] == "fp16-mixed"
    r = run("plan", "--model", "tiny-llama", "--gpu", "a100-80g", "--precision", "fp32", "--json")
    assert r.exit_code == 0, r.output
    assert {c["attn"] for c in json.loads(r.stdout)["candidates"]} == {"eager", "sdpa"}


@pytest.mark.parametrize(
    "args",
    [
        ("plan", "--method", "analytic", "--model", "tiny-llama", "--gpu", "cpu", "--epochs", "inf"),
        ("estimate", "--model", "tiny-llama", "--gpu", "cpu", "--epochs", "inf"),
        ("train", "--random-init", "tiny-llama", "--lr", "inf"),
        ("train", "--random-init", "tiny-llama", "--max-hours", "inf"),
    ],
)
def test_infinite_numbers_are_refused_before_any_work(args, tmp_path):
    """inf passes a `gt=0` bound; a run with an infinite learning rate or epochs must not start."""
    r = run(*args, "--out", str(tmp_path / "run")) if args[0] == "train" else run(*args)
    assert r.exit_code == 2, r.output
    assert "finite number (got inf)" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args,said",
    [
        (("plan", "--method", "analytic", "--gpu", "cpu", "-m", "tiny-llama", "--quant", ""), "--quant is empty"),
        (("plan", "--method", "analytic", "--gpu", "cpu", "-m", "tiny-llama", "--engine", " , "), "--engine is empty"),
        (("estimate", "--gpu", "", "-m", "tiny-llama"), "--gpu is empty"),
        (("estimate", "--gpu", "cpu", "-m", ""), "The model is empty"),
        (("train", "--model", "", "--max-steps", "1"), "--model is empty"),
        (("train", "--random-init", "tiny-llama", "--data", ""), "--data is empty"),
        (("train", "--random-init", "tiny-llama", "--plan", ""), "--plan is empty"),
        (("train", "--random-init", "tiny-llama", "--out", ""), "--out is empty"),
        (("plan", "--method", "analytic", "--gpu", "cpu", "-m", "tiny-llama", "--out", ""), "--out is empty"),
        (("plan", "--method", "analytic", "--gpu", "cpu", "-m", "tiny-llama", "--export", ""), "--export is empty"),
        (("bench", "--out", ""), "--out is empty"),
        (("bench", "--grid", ""), "--grid is empty"),
        (("report", ""), "The results path is empty"),
        (("report", "--out", "", "nonexistent-results"), "--out is empty"),
        (("demo", "--out", ""), "--out is empty"),
        (("serve", "--host", ""), "--host is empty"),
        (("serve", "--results", ""), "--results is empty"),
    ],
)
def test_an_empty_value_is_refused_not_read_as_the_default(args, said, tmp_path, monkeypatch):
    """'' meant every base (--quant), the default GPU (--gpu), the default model (train --model), every network
    interface (serve --host) or the current folder (--model, --data, --plan, --out, --export, --grid, --results,
    report's results): nothing is trained or served, and nothing is written there."""
    monkeypatch.chdir(tmp_path)
    r = run(*args)
    assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, r.output
    assert not list(tmp_path.iterdir())


def test_plan_out_naming_a_folder_is_refused_before_planning(tmp_path, monkeypatch):
    import ftopt.planner.request as request

    monkeypatch.setattr(request, "make", lambda *a: pytest.fail("planned before --out was checked"))
    r = run("plan", "--method", "analytic", "--gpu", "cpu", "-m", "tiny-llama", "--out", str(tmp_path))
    assert r.exit_code == 2 and f"--out {tmp_path} is a folder" in r.output, r.output


def test_packing_reads_the_same_in_every_command_that_takes_it():
    """bench said 'pack sequences to exactly --seq-len', which is --batching full, not packing."""

    def packing_help(command):  # the option's text, its wrapping (which depends on the column widths) removed
        text = runner.invoke(app, [command, "--help"]).output.split("--packing / --no-packing")[1]
        return "".join(re.split(r"\n  -", text)[0].split())

    assert {packing_help(c) for c in ("estimate", "plan", "train", "bench")} == {packing_help("train")}


@pytest.mark.parametrize(
    "args,said",
    [
        (["estimate", "--lora-r", "abc"], "error: --lora-r: Input should be a valid integer"),
        (["plan", "--gpus=x2"], "error: --gpus: Input should be a valid integer"),
        (["estimate", "--nope"], "error: No such option: --nope"),
    ],
)
def test_a_value_click_cannot_parse_is_one_line_naming_it(args, said):
    """The console entry, as a user runs it: click's refusals in ftopt's shape, one line with the value typed."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "ftopt", *args], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith(said), p.stderr
    typed = args[-1].split("=")[-1]
    assert typed.startswith("--") or f"(got '{typed}')" in p.stderr


def test_a_lora_rank_up_to_the_narrowest_wrapped_linear_is_accepted():
    """The bound is min(in, out) of the linears LoRA wraps: tiny-llama's k_proj (128 x 64) by default, 128 when only
    q_proj (128 x 128) is wrapped."""
    from ftopt.spec import Combination, load_model
    from ftopt.spec.errors import FtoptError
    from ftopt.spec.policy import lora_targets

    m = load_model("tiny-llama")
    assert lora_targets(m, Combination(lora_r=64)) == m.attention_linear_names()
    assert lora_targets(m, Combination(lora_r=128, lora_targets=("q_proj",))) == ["q_proj"]
    with pytest.raises(FtoptError, match="--lora-r 129 is larger than 128"):
        lora_targets(m, Combination(lora_r=129, lora_targets=("q_proj",)))
    assert run("estimate", "--model", "tiny-llama", "--gpu", "cpu", "--lora-r", "64").exit_code == 0


def test_an_empty_report_title_is_refused_before_anything_is_written(tmp_path):
    """`report --title ''` wrote a report under the default heading, as if no title was given."""
    from ftopt.results.rows import ResultRow
    from ftopt.spec import Combination

    results = tmp_path / "results.jsonl"
    row = ResultRow(key="a", label="full", combination=Combination(), status="oom", error_tail="out of memory")
    results.write_text(row.to_line() + "\n")
    for title in ("", "  "):
        r = run("report", str(results), "--out", str(tmp_path / "rep"), "--title", title)
        assert r.exit_code == 2 and "--title is empty; give a title" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "rep").exists()


def test_an_interrupted_run_says_so_once():
    """`train` printed its own 'interrupted: the last checkpoint ... --resume' line, then the command's plain
    'interrupted' after it: a run that says where it stopped is the one line."""
    import typer

    from ftopt.cli.common import run_body
    from ftopt.spec.errors import Interrupted

    line = "interrupted: the last checkpoint in run is intact; continue with --resume"

    def command(raised):
        def body():
            raise raised

        return lambda: run_body(body)

    for raised, said in ((Interrupted(line), line), (KeyboardInterrupt(), "interrupted")):
        app = typer.Typer()
        app.command()(command(raised))
        r = runner.invoke(app, [])
        assert r.exit_code == 130 and r.output.splitlines() == [said], r.output
