"""mmquant: BitSplit post-training quantization for OpenMMLab models.

The Python API works on any ``nn.Module``::

    import mmquant
    qmodel, report = mmquant.quantize(model, batches,
                                      mmquant.QuantConfig(w_bits=4))
    mmquant.save(qmodel, 'model_w4a8_int.pth')
    qmodel = mmquant.load(build_float_model(), 'model_w4a8_int.pth')

Importing mmquant defines its classes and nothing else; the OpenMMLab
classes (``mmquant.QuantizedModel``, ``mmquant.BitSplitQuantizer``, ...)
register themselves in :mod:`mmquant.registry` when a config names them.

The installed package also ships mmquant's configs and tools
(:mod:`mmquant.mim`): ``python -m mmquant ptq CONFIG CKPT`` runs
``tools/ptq.py`` from any directory.
"""
from .checkpoint.int_model import load_quantized as load
from .checkpoint.int_model import save_quantized as save
from .deploy import export_onnx
from .quantization import QuantConfig, QuantReport, quantize
from .version import __version__, version_info

__all__ = [
    '__version__', 'version_info', 'quantize', 'QuantConfig', 'QuantReport',
    'save', 'load', 'export_onnx'
]
