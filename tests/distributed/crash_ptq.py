"""``tools/ptq.py`` whose rank 1 fails in its third statistics update
(run as a script under ``torch.distributed.run``, for the tests)."""
import os
import os.path as osp
import runpy
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

if __name__ == '__main__':
    if os.environ.get('RANK') == '1':
        from mmquant.core.stats import StatsAccumulator
        update = StatsAccumulator.update_rows
        calls = [0]

        def crash(self, x, y):
            calls[0] += 1
            if calls[0] == 3:
                raise RuntimeError('injected failure')
            update(self, x, y)

        StatsAccumulator.update_rows = crash
    sys.argv[0] = osp.join(ROOT, 'tools', 'ptq.py')
    runpy.run_path(sys.argv[0], run_name='__main__')
