"""Batch samplers: seeded shuffled training shards with drop_last, and exact (unpadded) evaluation shards."""
import numpy as np
from paddle.io import BatchSampler


class TrainBatchSampler(BatchSampler):
    """Each epoch: one permutation from (seed, epoch), padded to a multiple of the world size, sharded by rank,
    cut into batches; the incomplete last batch is dropped so every step sees a full batch on every rank."""

    def __init__(self, num_samples, batch_size, rank=0, world_size=1, seed=0, shuffle=True, drop_last=True):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        per_rank = -(-num_samples // world_size)
        self.per_rank = per_rank
        if drop_last and per_rank < batch_size:
            raise ValueError(f"{num_samples} training samples over {world_size} process(es) give {per_rank} per "
                             f"process, fewer than one batch of {batch_size}; lower DATA.BATCH_SIZE")

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _indices(self):
        if self.shuffle:
            order = np.random.RandomState((self.seed * 1_000_003 + self.epoch) % (2 ** 32)).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = self.per_rank * self.world_size
        if total > self.num_samples:
            order = np.concatenate([order, order[: total - self.num_samples]])
        return order[self.rank::self.world_size]

    def __iter__(self):
        idx = self._indices().tolist()
        for start in range(0, len(idx), self.batch_size):
            batch = idx[start:start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch

    def __len__(self):
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)


class EvalBatchSampler(BatchSampler):
    """Rank r takes samples r, r + W, r + 2W, ...: every sample is evaluated exactly once over all ranks."""

    def __init__(self, num_samples, batch_size, rank=0, world_size=1):
        self.indices = list(range(rank, num_samples, world_size))
        self.batch_size = batch_size

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size]

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)
