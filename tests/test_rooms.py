"""Rooms, arrays, RIRs and the signal chain of the simulate stage."""

import numpy as np
import pytest
from scipy.signal import fftconvolve

from simulforge.settings import ConfigError
from simulforge.transforms import rooms, simulate

FS = 16000
SMALL_ROOMS = {"room": {"length_m": [3.0, 4.0], "width_m": [3.0, 4.0], "rt60_s": [0.15, 0.25]}}


def _settings(**sections):
    return simulate.load_settings(sections)


def _span(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[:, None] - points[None], axis=-1).max())


@pytest.mark.parametrize("mics", [5, 6, 7])
def test_glasses_preset_fits_a_frame(mics):
    offsets = rooms.mic_offsets(_settings(array={"glasses_mics": mics}).array)
    assert offsets.shape == (mics, 3)
    assert _span(offsets) <= 0.15
    assert np.allclose(offsets.mean(axis=0), 0.0)


def test_circular_and_custom_presets():
    circular = rooms.mic_offsets(_settings(array={"preset": "circular"}).array)
    assert circular.shape == (6, 3)
    assert np.allclose(np.linalg.norm(circular, axis=1), 0.10)
    custom = [[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]]
    offsets = rooms.mic_offsets(_settings(array={"preset": "custom", "custom_positions_m": custom}).array)
    assert np.allclose(offsets, np.asarray(custom) - np.mean(custom, axis=0))


def test_pool_rooms_place_everyone_inside_with_self_close_and_other_across():
    settings = _settings()
    pool = simulate.room_pool(settings)
    assert pool == simulate.room_pool(settings)  # rebuilt from the seed alone
    assert len(set(pool)) == settings.room.pool_size
    margin = settings.room.wall_margin_m
    for spec in pool:
        dims = np.asarray(spec.dims_m)
        mics = np.asarray(spec.mic_positions_m)
        for point in [*mics, spec.self_position_m, spec.other_position_m]:
            assert np.all(np.asarray(point) > 0) and np.all(np.asarray(point) < dims)
        assert np.all(np.asarray(spec.other_position_m)[:2] >= margin - 1e-4)
        centre = mics.mean(axis=0)
        assert 0.08 <= np.linalg.norm(np.asarray(spec.self_position_m) - centre) <= 0.12
        assert 1.0 - 1e-3 <= np.linalg.norm((np.asarray(spec.other_position_m) - centre)[:2]) <= 3.0 + 1e-3
        assert settings.room.rt60_s[0] <= spec.rt60_s <= settings.room.rt60_s[1]
        assert 0 < spec.absorption <= 1 and spec.max_order > 0
    assert simulate.room_pool(_settings(seed=1))[0] != pool[0]


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"room": {"rt60_s": [-0.1, 0.4]}}, "RT60 must be positive"),
        ({"room": {"rt60_s": [0.5, 0.3]}}, "min <= max"),
        ({"room": {"length_m": [20.0, 40.0], "rt60_s": [0.1, 0.2]}}, "cannot decay"),
        ({"mix": {"snr_db": [5.0, 120.0]}}, "snr_db"),
        ({"array": {"preset": "custom", "custom_positions_m": [[0, 0, 0], [1.2, 0, 0]]}}, "outside the room"),
        ({"array": {"preset": "custom", "custom_positions_m": [[0, 0, 0]]}}, "two or more"),
        ({"array": {"preset": "cube"}}, "not one of"),
        ({"array": {"glasses_mics": 9}}, "5, 6 or 7"),
        ({"array": {"self_mouth_offset_m": [0.0, 0.02, -0.005]}}, "from a mic"),
        ({"array": {"head_height_m": [1.5, 3.2]}}, "head_height_m"),
        ({"partner": {"distance_m": [2.5, 3.0]}}, "smallest room"),
        ({"beamformer": {"method": "mvdr"}}, "FLAC holds at most 8"),
        ({"room": {"pool_size": 0}}, "at least one room"),
    ],
)
def test_impossible_rooms_and_arrays_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _settings(**overrides)


def test_self_is_louder_than_other_at_the_array():
    spec = simulate.room_pool(_settings(**SMALL_ROOMS))[0]
    rirs = rooms.compute_rirs(spec, FS)
    assert rirs.shape[:2] == (2, 7) and rirs.dtype == np.float32
    energy = (rirs.astype(float) ** 2).sum(axis=-1)  # (source, mic): what equal talkers leave at each mic
    assert np.all(10 * np.log10(energy[0] / energy[1]) > 10.0)


def test_rir_cache_reuses_by_room_parameters():
    specs = simulate.room_pool(_settings(room={**SMALL_ROOMS["room"], "pool_size": 2}))
    cache = rooms.RirCache(capacity=1)
    first, hit = cache.get(specs[0], FS)
    assert not hit
    again, hit = cache.get(specs[0], FS)
    assert hit and again is first
    cache.get(specs[1], FS)  # evicts room 0
    recomputed, hit = cache.get(specs[0], FS)
    assert not hit and np.array_equal(recomputed, first)
    assert not rooms.RirCache(capacity=0).get(specs[0], FS)[1]


def test_fft_convolution_matches_direct_convolution():
    rng = np.random.default_rng(0)
    tracks = rng.standard_normal((2, 3000)).astype(np.float32)
    rirs = rng.standard_normal((2, 3, 500)).astype(np.float32)
    images = rooms.convolve(tracks, rirs)
    assert images.shape == (2, 3, 3000)
    for source in range(2):
        expected = fftconvolve(tracks[source][None].astype(float), rirs[source].astype(float), axes=-1)
        assert np.allclose(images[source], expected[:, :3000], atol=1e-3)


def test_diffuse_noise_is_more_coherent_between_close_mics():
    mics = np.array([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.5, 0.0, 0.0]])
    noise = rooms.diffuse_noise(FS * 4, mics, FS, rooms.seeded_rng(1, "noise"))
    assert noise.shape == (3, FS * 4)
    assert np.mean(noise**2) == pytest.approx(1.0, rel=1e-3)
    correlation = np.corrcoef(noise)
    assert correlation[0, 1] > 0.9 > 0.5 > abs(correlation[0, 2])
    assert np.array_equal(noise, rooms.diffuse_noise(FS * 4, mics, FS, rooms.seeded_rng(1, "noise")))


def test_snr_loudness_and_clipping_guard():
    rng = np.random.default_rng(3)
    active = np.zeros(FS, bool)
    active[: FS // 2] = True
    far = rng.standard_normal((4, FS)).astype(np.float32) * active
    near = 10 * rng.standard_normal((4, FS)).astype(np.float32)
    noise = rng.standard_normal((4, FS)).astype(np.float32)
    mixed = rooms.mix_at_snr(near + far, noise, 10.0, far, active)
    added = mixed - near - far
    assert 10 * np.log10(np.mean(far[:, active] ** 2) / np.mean(added**2)) == pytest.approx(10.0, abs=1e-3)
    gain = rooms.loudness_gain(mixed, active, -26.0)
    assert 10 * np.log10(np.mean((gain * mixed[:, active]) ** 2)) == pytest.approx(-26.0, abs=1e-3)
    loud = mixed * 10.0
    guard = rooms.clipping_guard(loud, 0.99)
    assert guard < 1 and np.abs(loud * guard).max() == pytest.approx(0.99)
    assert rooms.clipping_guard(mixed * 1e-3, 0.99) == 1.0


@pytest.mark.parametrize("method", ["delay_and_sum", "mvdr"])
def test_beams_pass_their_talker_and_favour_it_over_the_other(method):
    settings = _settings(**SMALL_ROOMS)
    spec = simulate.room_pool(settings)[0]
    rirs = rooms.compute_rirs(spec, FS)
    positions = np.asarray(spec.mic_positions_m)
    targets = [np.asarray(spec.self_position_m), np.asarray(spec.other_position_m)]
    rng = np.random.default_rng(5)
    talker = rng.standard_normal(FS * 2).astype(np.float32)

    def level(x):
        return 10 * np.log10(np.mean(x.astype(float) ** 2))

    self_mics, other_mics = rooms.convolve(np.stack([talker, talker]), rirs)
    self_beams = rooms.beamform(self_mics, positions, targets, FS, method, 0.01)
    other_beams = rooms.beamform(other_mics, positions, targets, FS, method, 0.01)
    assert self_beams.shape == (2, FS * 2)
    assert level(self_beams[0]) == pytest.approx(level(self_mics[0]), abs=1.0)  # distortionless toward SELF
    # Each beam keeps more of its own talker, relative to the other, than the other beam does.
    assert level(self_beams[0]) - level(other_beams[0]) > level(self_beams[1]) - level(other_beams[1]) + 3.0
