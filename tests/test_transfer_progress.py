# SPDX-License-Identifier: AGPL-3.0-or-later
"""Progress of copies of 64 MiB or more: reported piece by piece, and shown as
tqdm bars where progress shows; the bytes arrive as in one piece."""

import pytest
import torch

from mycelya_torch import _C, _progress

MIB = 1 << 20


@pytest.fixture
def reports():
    seen = []
    _C.set_progress_reporter(lambda label, done, total: seen.append((label, done, total)))
    yield seen
    _progress.install()


def check_reports(reports, kind, total):
    labels = {label for label, _, _ in reports}
    assert len(labels) == 1 and next(iter(labels)).startswith(f"{kind} of {total / MIB:.1f} MiB")
    done = [d for _, d, _ in reports]
    assert done[0] == 0 and done[-1] == total and done == sorted(done)
    assert {t for _, _, t in reports} == {total}
    return len(done) - 1  # pieces


def test_a_large_upload_and_download_go_in_reported_pieces(device, reports):
    x = torch.randn(20 * MIB + 3)  # 80 MiB and a bit: a short last piece
    remote = x.to(device)
    pieces = check_reports(reports, "upload", x.nbytes)
    assert pieces == 6  # 16 MiB each
    reports.clear()
    torch.testing.assert_close(remote.cpu(), x)
    assert 1 < check_reports(reports, "download", x.nbytes) <= 16


def test_a_view_with_an_offset_uploads_into_its_place(device, reports):
    base = torch.zeros(2, 17 * MIB, device=device)
    row = torch.randn(17 * MIB)
    base[1].copy_(row)
    assert check_reports(reports, "upload", row.nbytes) == 5
    torch.testing.assert_close(base[1].cpu(), row)
    assert base[0].cpu().eq(0).all()


def test_small_and_strided_copies_go_in_one_piece(device, reports):
    torch.testing.assert_close(torch.arange(1000.0).to(device).cpu(), torch.arange(1000.0))
    big = torch.randn(2 * (64 * MIB // 4) + 64, device=device)
    strided = big[::2].cpu()  # over 64 MiB, but not one contiguous range
    assert reports == []
    full = big.cpu()
    assert check_reports(reports, "download", full.nbytes) > 1
    torch.testing.assert_close(strided, full[::2])


def test_bars_show_on_stderr_when_asked(device, monkeypatch, capsys):
    monkeypatch.setenv("MYCELYA_PROGRESS", "1")
    _progress.install()
    try:
        torch.ones(16 * MIB + 1, dtype=torch.float32).to(device)
    finally:
        monkeypatch.delenv("MYCELYA_PROGRESS")
        _progress.install()
    assert "upload of 64.0 MiB" in capsys.readouterr().err


def test_no_bars_without_a_terminal_or_with_progress_off(device, monkeypatch, capsys):
    # pytest's stderr is not a terminal: with MYCELYA_PROGRESS unset, as with
    # it 0, a copy large enough for a bar shows none.
    for setting in ("0", None):
        if setting is None:
            monkeypatch.delenv("MYCELYA_PROGRESS", raising=False)
        else:
            monkeypatch.setenv("MYCELYA_PROGRESS", setting)
        assert _progress._tqdm() is None
        _progress.install()
        torch.ones(16 * MIB + 1, dtype=torch.float32).to(device)
        assert "upload of" not in capsys.readouterr().err, setting
    _progress.install()  # as the package installed it at import, for later tests
