"""mmquant's registries, children of mmengine's root registries.

Configs name mmquant's classes as ``type='mmquant.Name'``.  mmengine then
looks the scope ``mmquant`` up among the children of its root registry,
importing ``mmquant.registry`` on the way when no ``custom_imports``
brought it in, and the ``locations`` below import the modules that
register the classes.  So a config whose default scope is ``mmdet`` or
``mmpretrain`` reaches mmquant's classes with or without
``custom_imports=dict(imports=['mmquant'])``.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

#: Models and quantizers: ``mmquant.QuantizedModel``,
#: ``mmquant.BitSplitQuantizer``, ``mmquant.RTNQuantizer``.
MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmquant',
    locations=['mmquant.models', 'mmquant.quantizers'])
