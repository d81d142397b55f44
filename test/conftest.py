import pytest
from helpers import ACTION_DIM, make_batch
from torchrl.data import Bounded


@pytest.fixture
def action_spec():
    return Bounded(-1.0, 1.0, shape=(ACTION_DIM,))


@pytest.fixture
def batch():
    return make_batch()
