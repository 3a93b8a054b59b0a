"""Wrong on purpose: evicts a prefix's attention KV but keeps and reuses its recurrent state.

One prefix keeps its full snapshot; older ones are cropped to their Mamba2 conv/SSM state (small)
and still served from it, so their attention layers see none of the prefix. Three prefixes in
turn (the mixed check) and a prefix that comes back after another (the near-miss check) catch it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hybrid_cache_base import PrefixCachingEngine


class StateAfterKvEvicted(PrefixCachingEngine):
    def __init__(self, spec):
        super().__init__(spec)
        self.full = {}  # at most one prefix with its attention KV
        self.state_only = {}  # the bug: served as if nothing had been evicted

    def lookup(self, prefix):
        found = self.full.get(prefix)
        return found if found is not None else self.state_only.get(prefix)

    def store(self, prefix, cache):
        for old, snapshot in self.full.items():
            for layer in snapshot.layers:  # drop the attention KV, keep the conv/SSM state
                if (
                    getattr(layer, "is_croppable", False)
                    and getattr(layer, "keys", None) is not None
                ):
                    layer.keys, layer.values = layer.keys[..., :0, :], layer.values[..., :0, :]
            self.state_only[old] = snapshot
        self.full = {prefix: cache}


def create_engine(spec):
    return StateAfterKvEvicted(spec)
