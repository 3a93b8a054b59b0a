"""Wrong on purpose: a prefix cache keyed by the prefix without its last token.

A prompt whose prefix differs from a cached one only in its last token gets the cached state,
which has already consumed the other token: the hybrid_ssm near-miss check must catch it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hybrid_cache_base import PrefixCachingEngine


class LoosePrefixKey(PrefixCachingEngine):
    def __init__(self, spec):
        super().__init__(spec)
        self.snapshots = {}

    def lookup(self, prefix):
        return self.snapshots.get(prefix[:-1])  # the bug: the last prefix token is not in the key

    def store(self, prefix, cache):
        self.snapshots[prefix[:-1]] = cache


def create_engine(spec):
    return LoosePrefixKey(spec)
