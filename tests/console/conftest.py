"""Console tests run the real app on a real embedded pool in tmp_path, with a fixed clock."""

from __future__ import annotations

import pytest

from console.app import BlockfoldApp
from console.clock import FixedClock
from console.sample import sample_pool
from engine.api import LocalAdmin

SIZE = (120, 34)


@pytest.fixture
def pool_dir(tmp_path):
    return sample_pool(tmp_path)


@pytest.fixture
def admin(pool_dir):
    admin = LocalAdmin.open(pool_dir, actor="console")
    yield admin
    admin.close()


@pytest.fixture
def make_app(admin):
    def make(**kwargs):
        # Polls come only from the first frame and from actions, so trends are deterministic.
        kwargs.setdefault("poll_interval", 3600)
        return BlockfoldApp(admin, clock=FixedClock(), **kwargs)
    return make
