"""`ftopt train` on user data through the TRL data path: chat data on a random-init model (BPE trained on the
data), packed text (position-id reset inside the Trainer), and no evaluation split."""

import json

from typer.testing import CliRunner

from ftopt.cli.app import app

runner = CliRunner()
CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
        ]
    }
    for a in range(6)
    for b in range(6)
]


def run(tmp_path, rows, *flags):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--seq-len",
            "48",
            "--micro-batch",
            "4",
            "--eval-max-examples",
            "0",
            "--json",
            *flags,
        ],
    )
    assert r.exit_code == 0, r.output
    return json.loads((out / "metrics.json").read_text()), out


def test_chat_on_random_init_trains_a_bpe_and_saves_it(tmp_path):
    m, out = run(tmp_path, CHATS)
    d = m["data"]
    assert d["format"] == "messages" and d["unk_fraction"] < 0.05 and 0 < d["trained_tokens"] < d["tokens"]
    assert "byte-level BPE" in m["tokenizer"]
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert "generation" in (saved.get("chat_template") or (out / "chat_template.jinja").read_text())


def test_packed_text_without_eval_split(tmp_path):
    rows = [{"text": " ".join(["packing keeps documents apart"] * (1 + i % 4))} for i in range(40)]
    m, _ = run(tmp_path, rows, "--packing", "--eval-fraction", "0")
    d = m["data"]
    assert d["eval_rows"] == 0 and d["rows"] == 40 and d["packed_rows"] < 40
    assert m["measured"]["eval_loss"] is None and m["measured"]["steps"] == 3
