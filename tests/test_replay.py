import io

import numpy as np
import pytest
import torch

from cpcrl.data import SequenceReplay


def episode(ep_id: int, length: int, terminal: bool = False):
    steps = np.arange(length)
    return {"obs": np.stack([np.full(length, ep_id), steps], 1).astype(np.float32),
            "action": np.ones((length, 1), np.float32) * (steps[:, None] > 0), "reward": steps.astype(np.float32),
            "is_first": steps == 0, "is_terminal": (steps == length - 1) & terminal}


def assert_no_silent_mixing(batch):
    obs, first = batch["obs"].numpy(), batch["is_first"].numpy()
    same = (obs[1:, :, 0] == obs[:-1, :, 0]) & (obs[1:, :, 1] == obs[:-1, :, 1] + 1)
    assert (same | first[1:]).all(), "a chunk continued into another episode without is_first"


def test_sample_shapes_dtypes_and_episode_marks():
    replay = SequenceReplay((2,), np.float32, 1, seed=0)
    for i, n in enumerate([3, 10, 1, 7, 20]):  # episodes shorter than a chunk too
        replay.add_episode(episode(i, n, terminal=i % 2 == 0))
    batch = replay.sample(32, 8)
    assert batch["obs"].shape == (8, 32, 2) and batch["action"].shape == (8, 32, 1)
    assert batch["reward"].shape == batch["is_first"].shape == batch["is_terminal"].shape == (8, 32)
    assert batch["is_first"].dtype == torch.bool
    assert_no_silent_mixing(batch)
    assert batch["is_first"][1:].any()  # chunks do cross episode ends, flagged


def test_ring_overwrite_never_mixes_episodes():
    replay = SequenceReplay((2,), np.float32, 1, capacity=50, seed=0)
    rng = np.random.default_rng(0)
    for i in range(40):
        replay.add_episode(episode(i, int(rng.integers(1, 15))))
        if len(replay) >= 6:
            assert_no_silent_mixing(replay.sample(64, 6))
    assert len(replay) == 50 and len(replay.data["obs"]) == 50


def test_per_env_streams_store_only_finished_episodes():
    replay = SequenceReplay((1,), np.float32, 2)
    replay.add(0, [0.0], [0.0, 0.0], 0.0, is_first=True)
    replay.add(1, [5.0], [0.0, 0.0], 0.0, is_first=True)
    replay.add(0, [1.0], [1.0, 0.0], 1.0, is_first=False)
    assert len(replay) == 0
    replay.add(0, [2.0], [0.0, 1.0], 2.0, is_first=False, is_terminal=True, last=True)
    assert len(replay) == 3 and replay.episodes == 1
    assert replay.data["is_terminal"][:3].tolist() == [False, False, True]
    replay.add(3, [9.0], [0.0, 0.0], 0.0, is_first=False)  # joined mid-episode: ignored until a start
    assert replay.pending[3] == []


def test_images_stay_uint8():
    replay = SequenceReplay((3, 64, 64), np.uint8, 2)
    replay.add_episode({"obs": np.full((5, 3, 64, 64), 200, np.uint8), "action": np.zeros((5, 2)),
                        "reward": np.zeros(5), "is_first": np.eye(5)[0].astype(bool), "is_terminal": np.zeros(5, bool)})
    assert replay.data["obs"].dtype == np.uint8
    assert replay.sample(2, 4)["obs"].dtype == torch.uint8


def test_checkpoint_roundtrip_weights_only():
    replay = SequenceReplay((2,), np.float32, 1, capacity=30, seed=0)
    for i in range(9):
        replay.add_episode(episode(i, 6))
    buf = io.BytesIO()
    torch.save(replay.state_dict(), buf)
    buf.seek(0)
    restored = SequenceReplay((2,), np.float32, 1, capacity=30, seed=0)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert (len(restored), restored.head, restored.episodes) == (len(replay), replay.head, replay.episodes)
    for k in replay.data:
        np.testing.assert_array_equal(restored.data[k][:30], replay.data[k][:30])
    with pytest.raises(ValueError, match="capacity"):
        SequenceReplay((2,), np.float32, 1, capacity=31).load_state_dict(replay.state_dict())
