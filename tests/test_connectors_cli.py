"""`cellwatch plant serve` and `cellwatch ingest`: help, and one-line errors naming what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from cellwatch.cli import cli
from plant.secrets import SecretsError


@pytest.mark.parametrize("args", [["plant", "serve"], ["ingest"]])
def test_help(args):
    res = CliRunner().invoke(cli, [*args, "--help"])
    assert res.exit_code == 0 and "--pki" in res.output and "--secrets" in res.output


def test_bad_secrets_name_the_key_and_never_the_password(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text("[twin_users.bob]\nrole = 'admin'\npassword = 'long-enough'\n")
    secrets.chmod(0o600)
    res = CliRunner().invoke(cli, ["plant", "serve", "--secrets", str(secrets), "--pki", str(tmp_path / "pki")])
    assert isinstance(res.exception, SecretsError)
    assert "twin_users.bob.role" in str(res.exception) and "long-enough" not in str(res.exception)
    secrets.chmod(0o644)
    res = CliRunner().invoke(cli, ["plant", "serve", "--secrets", str(secrets), "--pki", str(tmp_path / "pki")])
    assert "readable by others" in str(res.exception)


def test_an_unknown_endpoint_is_a_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "cellwatch.cli", "ingest", "--data", str(tmp_path / "d"),
                          "--endpoint", "nope", "--metrics-port", "0"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "no endpoint(s) ['nope']" in res.stderr
