"""Post-training quantization of any ``nn.Module`` (pure torch)."""
from .config import LayerSpec, QuantConfig
from .engine import default_forward, quantize
from .methods import WEIGHT_METHODS, WeightMethod, register_weight_method
from .report import LayerReport, QuantReport

__all__ = [
    'LayerSpec', 'QuantConfig', 'quantize', 'default_forward',
    'LayerReport', 'QuantReport', 'WEIGHT_METHODS', 'WeightMethod',
    'register_weight_method'
]
