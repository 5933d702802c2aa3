"""A registered model that holds a quantized OpenMMLab architecture."""
import copy
from typing import Any, Dict, Optional, Union

from mmengine.model import BaseModel
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from mmquant.registry import MODELS


@MODELS.register_module()
class QuantizedModel(BaseModel):
    """Wrap an mmengine ``BaseModel`` whose layers are (to be) quantized.

    Put it around the ``model`` of any mmpretrain/mmdet config and the
    stock test loop, ``tools/test.py`` of mmdet/mmpretrain and their
    evaluators work unchanged::

        custom_imports = dict(imports=['mmquant'])
        model = dict(
            _delete_=True,  # do not merge the base model's keys in
            type='mmquant.QuantizedModel',
            architecture=_base_.model,
            int_checkpoint='work_dirs/ptq/retinanet_w4a8_int.pth')

    The ``architecture`` is built float, then the INT checkpoint (if
    given) replaces its quantized layers by
    :class:`~mmquant.nn.QuantizedLayer` and loads every tensor, bit-exact.
    An INT checkpoint given as the runner's ``load_from`` (the checkpoint
    argument of ``tools/test.py``) is recognised and loaded the same way.

    ``loss``/``predict``/``tensor`` modes are forwarded to the
    architecture, whose ``data_preprocessor`` this model shares.

    Args:
        architecture (dict | nn.Module): The float model or its config,
            built in the config's default scope.
        int_checkpoint (str, optional): An mmquant INT checkpoint to load.
        data_preprocessor (dict, optional): The preprocessor for an
            ``architecture`` config that has none, as mmengine's Runner
            does for ``model`` (it passes a config's top-level
            ``data_preprocessor`` here). An architecture's own
            ``data_preprocessor`` wins; ignored for a built module.
        init_cfg (dict, optional): Unused; weights come from checkpoints.
        **merged: Keys that mmengine's config inheritance merged in from
            the base config's ``model`` when the child config writes
            ``model = dict(type='mmquant.QuantizedModel',
            architecture=_base_.model)`` without ``_delete_=True``
            (``backbone``, ``neck``, ``head``, ``train_cfg`` ...). They are
            accepted only if each equals the architecture's own entry;
            anything else fails with a message naming it.
    """

    def __init__(self,
                 architecture: Union[Dict[str, Any], nn.Module],
                 int_checkpoint: Optional[str] = None,
                 data_preprocessor: Optional[Dict[str, Any]] = None,
                 init_cfg: Optional[Dict[str, Any]] = None,
                 **merged: Any) -> None:
        _check_merged_keys(architecture, merged)
        if isinstance(architecture, dict):
            architecture = copy.deepcopy(architecture)
            if data_preprocessor is not None:
                architecture.setdefault('data_preprocessor',
                                        copy.deepcopy(data_preprocessor))
            architecture = ROOT_MODELS.build(architecture)
        if not isinstance(architecture, BaseModel):
            raise TypeError('QuantizedModel wraps an mmengine BaseModel '
                            '(an mmpretrain classifier, an mmdet detector '
                            f'...), got {type(architecture).__name__}')
        super().__init__(data_preprocessor=architecture.data_preprocessor)
        self.architecture = architecture
        self.register_load_state_dict_pre_hook(_load_int_container)
        if int_checkpoint is not None:
            from mmquant.checkpoint.int_model import load_quantized
            load_quantized(self.architecture, int_checkpoint)

    def forward(self,
                inputs: Any,
                data_samples: Optional[Any] = None,
                mode: str = 'tensor') -> Any:
        """Run the architecture in ``mode`` (``loss``/``predict``/
        ``tensor``)."""
        return self.architecture(inputs, data_samples, mode)


def _check_merged_keys(architecture: Any, merged: Dict[str, Any]) -> None:
    """Accept only the base ``model`` keys a config merge left behind."""
    if not merged:
        return
    arch = architecture if isinstance(architecture, dict) else {}
    stray = sorted(k for k in merged
                   if k not in arch or arch[k] != merged[k])
    if stray:
        raise TypeError(
            f'QuantizedModel got unexpected argument(s) {stray}. If they '
            "come from the base config's model (a child config writing "
            "model=dict(type='mmquant.QuantizedModel', architecture=...) "
            "is merged into the base's model dict), add _delete_=True to "
            'that dict; the model itself goes in `architecture`.')


def _load_int_container(module: QuantizedModel, state_dict: Dict[str, Any],
                        prefix: str, *args: Any) -> None:
    """Let a runner's ``load_from`` load an mmquant INT checkpoint.

    mmengine's runner hands the loaded file (read with
    ``torch.load(weights_only=True)``) to ``load_state_dict`` as it is. An
    mmquant container is verified (checksums included), its layers are
    swapped in and loaded, and ``state_dict`` is replaced in place by this
    model's resulting state dict, so the generic loading that follows finds
    exactly the keys it expects.
    """
    if state_dict.get(prefix + 'format') != 'mmquant-int':
        return
    from mmquant.checkpoint.container import verify_container
    from mmquant.checkpoint.int_model import apply_quantized
    obj = {k[len(prefix):]: v for k, v in state_dict.items()
           if k.startswith(prefix)}
    tensors, meta = verify_container(obj, '<load_from checkpoint>')
    apply_quantized(module.architecture, tensors, meta)
    state_dict.clear()
    for key, value in module.state_dict().items():
        state_dict[prefix + key] = value
