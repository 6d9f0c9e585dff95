"""The layer functions behind `ftopt estimate`: a test builds the request the CLI would and gets the same answer
without Typer."""

import json

import pytest
from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.planner.request import EstimateRequest, estimate_for
from ftopt.spec.errors import FtoptError


def request(**given) -> EstimateRequest:
    """An EstimateRequest with every flag not given (None), as the CLI builds it, and `given` on top."""
    fields = {name: None for name in EstimateRequest.model_fields}
    return EstimateRequest(**{**fields, "model": "llama-2-7b", "method": "analytic", **given})


def test_estimate_for_is_what_the_cli_prints():
    args = ["estimate", "--model", "llama-2-7b", "--gpu", "a100-80g", "--lora-r", "8", "--zero", "2", "--gpus", "4"]
    cli = CliRunner().invoke(app, [*args, "--json"])
    assert cli.exit_code == 0, cli.output
    e = estimate_for(request(gpu="a100-80g", lora_r=8, zero=2, gpus=4))
    assert e.to_json() == json.loads(cli.stdout)
    assert e.to_json() != estimate_for(request(gpu="a100-80g", lora_r=8, gpus=4)).to_json()  # the flags reach it


def test_estimate_for_refuses_a_bad_flag_in_one_sentence():
    with pytest.raises(FtoptError, match="--attn must be one of"):
        estimate_for(request(attn="xformers"))
