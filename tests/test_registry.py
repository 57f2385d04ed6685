import pytest

from harness.core.registry import Registry, UnknownNameError


def test_duplicate_rejected_and_unknown_answers_with_valid_names():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)

    @reg.register("beta")
    def beta():
        return 2

    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 3)
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    msg = str(info.value)
    assert "Did you mean 'alpha'" in msg and "alpha, beta" in msg
    assert reg.names() == ["alpha", "beta"] and "beta" in reg and len(reg) == 2


def test_project_registries_are_filled():
    from curation.filters import FILTERS
    from curation.sources import SOURCES
    from downstream.protocols import PROTOCOLS
    from downstream.sets import DOWNSTREAM
    from pretrain.methods import METHODS
    from pretrain.models import BACKBONES

    assert set(SOURCES.names()) >= {"cc3m", "cc12m", "redcaps", "yfcc", "laion", "wit", "shutterstock", "imagenet"}
    assert set(DOWNSTREAM.names()) >= {
        "cifar100",
        "dtd",
        "caltech101",
        "pets",
        "domainnet_real",
        "domainnet_clipart",
        "eurosat",
        "cameratraps",
        "cassava",
        "digits",
        "textures",
    }
    assert {"linear", "finetune"} <= set(PROTOCOLS.names())
    assert "supervised" in METHODS and "test_resnet" in BACKBONES and len(FILTERS) >= 1
