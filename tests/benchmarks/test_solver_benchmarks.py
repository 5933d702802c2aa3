"""The solver benchmark tools on tiny problems (seconds)."""
import json

import pytest

from mmquant.core.solver import SCHEDULES

from .conftest import load_tool


def test_benchmark_schedules_rows_and_summary(tmp_path, capsys):
    tool = load_tool('analysis_tools', 'benchmark_schedules.py')
    out = tmp_path / 'rows.json'
    assert tool.main(['--sizes', '16', '--seeds', '1', '--bits', '2', '3',
                      '--json', str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r['cin'], r['cout'], r['seed'], r['bits']) for r in rows] == [
        (16, 32, 0, 2), (16, 32, 0, 3)
    ]
    for r in rows:
        assert set(r['objective']) == set(SCHEDULES)
        ref = r['objective']['canonical-planes+integer']
        assert r['rel']['canonical-planes+integer'] == 0.0
        assert r['rel']['integer'] == pytest.approx(
            r['objective']['integer'] / ref - 1)
    # W2: a plane move is an integer move, so the paper's rounds and the
    # default's (both visit every coordinate) coincide; the canonical-plane
    # rounds visit only the round-start candidates (the two-phase schedule
    # adds integer rounds that may improve on them)
    w2 = rows[0]
    planes = 'canonical-planes'
    assert w2['objective']['integer'] == pytest.approx(
        w2['objective']['paper'], rel=1e-12)
    assert w2['objective']['integer'] <= w2['objective'][planes]
    assert w2['rounds'][planes + '+integer'] > w2['rounds'][planes]
    text = capsys.readouterr().out
    assert '[2/2, ETA' in text
    assert ('| canonical-planes+integer | +0.00% | +0.00% to +0.00% '
            '| 0 / 1 / 0 |') in text


def test_benchmark_schedules_refuses_no_seeds(capsys):
    tool = load_tool('analysis_tools', 'benchmark_schedules.py')
    with pytest.raises(SystemExit):
        tool.main(['--seeds', '0'])
    assert '--seeds must be >= 1' in capsys.readouterr().err


def test_benchmark_solver_rows_and_table(capsys):
    """The solver benchmark on a tiny layer: every schedule and the direct
    port are scored from the same start; the table has one line each."""
    tool = load_tool('analysis_tools', 'benchmark_solver.py')
    rows = tool.run_problem('conv3x3 4->6', 4, 6, 256, (3, ), 3, False, 1,
                            0)
    assert len(rows) == 1
    row = rows[0]
    assert (row['N'], row['M'], row['K'], row['bits']) == (36, 6, 256, 3)
    assert row['direct']['rounds'] == 3
    assert not row['direct']['extrapolated']
    for key in tool.SCHEDULE_RUNS:
        # no schedule ends above the initialisation
        assert row[key]['objective'] <= row['rtn']['objective']
        assert len(row[key]['times_s']) == 1
    text = tool.table(rows)
    assert len(text.splitlines()) == 2 + 2 + len(tool.SCHEDULE_RUNS)
    assert '| direct port | 3 |' in text
    assert 'N = 36, M = 6, K = 256 rows' in capsys.readouterr().out
