"""The shard life cycle both writers share: products are transactions, shards seal between them."""
from __future__ import annotations


class ShardLifecycle:
    """Subclasses provide `target` (bytes), `_keys` (keys in the open shard), `_is_open()`,
    `_size()` (bytes of the open shard so far), `_seal() -> record` and `_discard()`."""

    def commit(self) -> list[dict]:
        """End the product; seals the open shard if it reached the target size. Returns the
        records of shards sealed by this call."""
        if self._is_open() and self._keys and self._size() >= self.target:
            return [self._seal()]
        return []

    def close(self) -> list[dict]:
        """Seal the open shard if it holds samples (else discard it); returns records sealed now."""
        if not self._is_open():
            return []
        if self._keys:
            return [self._seal()]
        self._discard()
        return []

    def abort(self) -> None:
        """Discard the open shard (temporary files removed); sealed shards stay."""
        if self._is_open():
            self._discard()
