"""``buy --ssh-key`` refuses a file that is not an OpenSSH public key before anything
else happens: one ``error:`` line, exit code 1, no wallet touched, nothing paid."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pmarket.cli.main import main

ED25519 = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
           " buyer@example")


@pytest.mark.parametrize(("content", "why"), [
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
     "-----END OPENSSH PRIVATE KEY-----\n", "private key"),
    ("hello world\n", "unsupported SSH key type"),
    ("ssh-ed25519 AAAA!!!\n", "not valid base64"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6\n", "truncated"),
    (ED25519 + "\n" + ED25519 + "\n", "exactly one"),
    (b"\xff\xfe".decode("latin-1"), "not ASCII"),
])
def test_a_bad_key_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          content: str, why: str) -> None:
    key = tmp_path / "key.pub"
    key.write_bytes(content.encode("latin-1"))
    wallet = tmp_path / "no-wallet"
    code = main(["buy", "--wallet", str(wallet), "--budget", "1", "--ssh-key", str(key),
                 "cpu:1,0.1,1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    assert why in err[0] and str(key) in err[0]
    assert not wallet.exists()


def test_a_missing_key_file_is_one_error_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["buy", "--wallet", str(tmp_path / "w"), "--budget", "1", "--ssh-key",
                 str(tmp_path / "nope.pub"), "cpu:1,0.1,1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "cannot read the SSH key" in err[0], err


def test_a_good_key_is_read_and_checked(tmp_path: Path) -> None:
    from p2pmarket.client.guestaccess import read_public_key
    key = tmp_path / "id_ed25519.pub"
    key.write_text(ED25519 + "\n")
    assert read_public_key(key) == ED25519
