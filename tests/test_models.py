"""Contract tests for the three networks: the notebook's shapes, parameter counts and layers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cifarlab import augmentation, config, models

# The notebook's model summary (step D): layer type, output shape, parameters.
NOTEBOOK_TABLE = [
    ("Conv2D", (None, 32, 32, 32), 896),  # 3·3·3·32 + 32
    ("Conv2D", (None, 32, 32, 32), 9248),  # 3·3·32·32 + 32
    ("MaxPooling2D", (None, 16, 16, 32), 0),
    ("Conv2D", (None, 16, 16, 64), 18496),  # 3·3·32·64 + 64
    ("Conv2D", (None, 16, 16, 64), 36928),  # 3·3·64·64 + 64
    ("MaxPooling2D", (None, 8, 8, 64), 0),
    ("Flatten", (None, 4096), 0),
    ("Dense", (None, 512), 2097664),  # 4096·512 + 512
    ("Dropout", (None, 512), 0),
    ("Dense", (None, 10), 5130),  # 512·10 + 10
]


def layer_table(model: keras.Model) -> list[tuple]:
    return [
        (type(layer).__name__, tuple(layer.output.shape), layer.count_params())
        for layer in model.layers[1:]
    ]


def test_baseline_matches_the_notebook_summary():
    model = models.build_model(config.BASELINE)
    assert layer_table(model) == NOTEBOOK_TABLE
    assert model.count_params() == 2_168_362


def test_augmented_is_the_same_network():
    assert layer_table(models.build_model(config.AUGMENTED)) == NOTEBOOK_TABLE


def test_batchnorm_has_bias_free_units_each_followed_by_normalization():
    model = models.build_model(config.BATCHNORM)
    # Convolutions 864 + 9,216 + 18,432 + 36,864, dense 2,097,152, output 5,130 = 2,167,658;
    # five BatchNormalizations with 4 values per channel: 4·(32+32+64+64+512) = 2,816.
    assert model.count_params() == 2_170_474
    kinds = [type(layer).__name__ for layer in model.layers]
    for index, layer in enumerate(model.layers):
        if isinstance(layer, keras.layers.Conv2D) or layer.name == "features_linear":
            assert layer.use_bias is False
            assert kinds[index + 1 : index + 3] == ["FusedBatchNormalization", "Activation"]
    assert kinds.count("FusedBatchNormalization") == 5
    assert kinds[-2:] == ["Dropout", "Dense"]


def test_only_batchnorm_normalizes():
    for experiment in (config.BASELINE, config.AUGMENTED):
        model = models.build_model(experiment)
        assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_image_size_changes_the_input_and_the_dense_layer():
    model = models.build_model(config.override(config.BASELINE, image_size=28))
    # After two 2×2 poolings 28 → 7: the dense layer sees 7·7·64 = 3,136 inputs.
    assert model.get_layer("features").count_params() == 3136 * 512 + 512


def test_augmentation_is_random_in_training_and_inactive_at_inference():
    images = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    augment = augmentation.augmenter(config.AUGMENTED.augmentation, seed=0)
    inference = augment(images, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(inference), images)
    changed = keras.ops.convert_to_numpy(augment(images, training=True))
    assert not np.allclose(changed, images)
    model = models.build_model(config.AUGMENTED)
    np.testing.assert_array_equal(
        model.predict(images, verbose=0), model.predict(images, verbose=0)
    )


def test_saved_model_predicts_identically(tmp_path):
    model = models.build_model(config.BATCHNORM, dtype_policy="mixed_bfloat16")
    models.compile_model(model, config.BATCHNORM)
    images = np.random.default_rng(1).random((8, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(
        model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    )


def test_a_training_step_gives_finite_weights_and_loss():
    model = models.build_model(config.BATCHNORM)
    models.compile_model(model, config.BATCHNORM)
    images = np.random.default_rng(2).random((16, 32, 32, 3)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[np.arange(16) % 10]
    loss = model.train_on_batch(images, labels)[0]
    assert np.isfinite(loss)
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


def test_rotation_and_shift_move_a_dot_within_their_ranges():
    # A bright 2×2 dot at the centre of a dark 32×32 image: a shift of at most 10% (3.2 pixels)
    # and a rotation about the centre of at most 10° keep it within about 5 pixels.
    images = np.zeros((64, 32, 32, 3), dtype=np.float32)
    images[:, 15:17, 15:17] = 1.0
    layer = augmentation.RandomRotationShift(rotation_degrees=10, shift=0.1, seed=3)
    moved = keras.ops.convert_to_numpy(layer(images, training=True))
    rows, columns = np.nonzero(moved.sum(axis=3).max(axis=0) > 0.25)
    assert rows.min() >= 10 and rows.max() <= 21 and columns.min() >= 10 and columns.max() <= 21
    centres = [np.argwhere(image.sum(axis=2) > 0.25).mean(axis=0) for image in moved]
    assert np.std(centres, axis=0).min() > 0.5  # Each image is shifted its own way.


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
@pytest.mark.parametrize("epochs, steps", [(1, 1), (2, 1), (16, 88)])
def test_every_schedule_works_down_to_a_single_step(schedule, epochs, steps):
    # One step in all: a run of one epoch on a handful of images, as tests and smoke runs do.
    chosen = config.override(config.MODERN, schedule=schedule, epochs=epochs)
    rate = models.learning_rate(chosen, steps)
    values = [float(rate(step)) if callable(rate) else rate for step in range(epochs * steps + 1)]
    assert all(np.isfinite(values)) and max(values) <= chosen.learning_rate * (1 + 1e-6)
    if schedule == "onecycle":
        assert values[0] < values[max(1, epochs * steps // 4)] or epochs * steps == 1


def test_patch_whitening_decorrelates_the_patches_it_was_adapted_to():
    # Blocky images, so neighbouring pixels and the colour channels are strongly correlated.
    rng = np.random.default_rng(0)
    coarse = rng.random((400, 8, 8, 1)) * 0.6 + rng.random((400, 8, 8, 3)) * 0.4
    images = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype("float32")
    layer = models.PatchWhitening()
    layer.adapt(images)
    outputs = keras.ops.convert_to_numpy(layer(images)).reshape(-1, 24)
    assert np.abs(outputs.mean(axis=0)).max() < 1e-3  # Centred on the images adapted to.
    # Each filter is paired with its negative; the first twelve are the whitened directions.
    covariance = np.cov(outputs[:, :12], rowvar=False)
    np.testing.assert_allclose(outputs[:, 12:], -outputs[:, :12], atol=1e-5)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 1e-3
    # Unit variance along every direction whose variance dwarfs the regularizing epsilon.
    assert 0.9 < covariance[-1, -1] <= 1.0 and np.all(np.diag(covariance) <= 1.0 + 1e-4)


def test_patch_whitening_whitens_pixels_in_0_255_as_it_does_pixels_in_0_1():
    # The directions across the blocks' edges vary little: an epsilon that does not scale with
    # the pixels would whiten them fully in one range and damp them in the other.
    rng = np.random.default_rng(1)
    coarse = rng.random((400, 8, 8, 1)) * 0.6 + rng.random((400, 8, 8, 3)) * 0.4
    images = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype("float32")
    outputs = []
    for scale in (1.0, 255.0):
        layer = models.PatchWhitening()
        layer.adapt(images * scale)
        outputs.append(keras.ops.convert_to_numpy(layer(images * scale)))
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-3)


def test_adapt_fits_each_layer_to_the_images_as_they_reach_it():
    """A nested model's `Normalization`, and one behind a convolution, as users' models have."""
    images = np.random.default_rng(0).random((300, 8, 8, 3)).astype("float32") * [1, 2, 3]
    inputs = keras.Input((8, 8, 3))
    nested = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Normalization()])
    convolution = keras.layers.Conv2D(4, 3)
    behind = keras.layers.Normalization()
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(behind(convolution(nested(inputs)))))
    models.adapt(keras.Model(inputs, outputs), images)

    def channel_means(x):
        return np.asarray(x, dtype="float64").reshape(-1, np.shape(x)[-1]).mean(axis=0)

    normalized = nested.predict(images, verbose=0)
    np.testing.assert_allclose(channel_means(nested.layers[0].mean), images.mean((0, 1, 2)), 1e-5)
    assert np.abs(channel_means(normalized)).max() < 1e-4
    features = keras.ops.convert_to_numpy(convolution(normalized))
    np.testing.assert_allclose(channel_means(behind.mean), channel_means(features), atol=1e-5)
