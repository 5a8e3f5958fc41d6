"""The built-in encoders: weight counts against torchvision's (an independent count) and feature sizes."""

import numpy as np
import pytest

import amcl_keras as amcl
from amcl_keras import config as config_lib


def _trainable(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


# torchvision's resnet18 / resnet50 have 11,689,512 / 25,557,032 parameters (BN running statistics are buffers, not
# parameters); without the 1000-way classifier (513,000 / 2,049,000) and with the CIFAR stem (a 3×3 conv, 1,728
# weights, instead of the 7×7 one, 9,408) that is 11,168,832 / 23,500,352 trainable weights.
@pytest.mark.parametrize("name,expected,features", [("resnet18_cifar", 11_168_832, 512),
                                                    ("resnet50_cifar", 23_500_352, 2048)])
def test_cifar_resnets_have_torchvisions_weight_count_and_feature_size(name, expected, features):
    encoder = amcl.encoders.get(name, (32, 32, 3))
    assert _trainable(encoder) == expected
    assert encoder.output.shape[-1] == features
    assert amcl.encoders.get(name, (16, 16, 3), width=8).output.shape[-1] == features // 8


def test_resnet50_cifar_is_selectable_in_the_config():
    assert config_lib.load(None, ["model.encoder=resnet50_cifar"]).model.encoder == "resnet50_cifar"
