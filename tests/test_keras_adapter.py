"""KerasAdapter on the torch backend (what CI runs), with the same toolbox as TorchAdapter."""

import os
import subprocess
import sys
import importlib.util

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("these tests run on the torch backend (KERAS_BACKEND=torch)", allow_module_level=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mega_deap  # noqa: E402
from mega_deap import TensorPopulation, mutSparseGaussian  # noqa: E402
from mega_deap.adapters import KerasAdapter, accuracy  # noqa: E402


def sequential(seed=0, bn=True):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same")]
    if bn:
        layers.append(keras.layers.BatchNormalization())
    layers += [keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    return keras.Sequential(layers)


def functional(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((64,))
    h = keras.layers.Dense(16, activation="relu")(inp)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


def with_bn_stats(model, x):
    model(x, training=True)  # moves the moving statistics away from 0 / 1
    return model


def test_layout_follows_weights_and_round_trips():
    m = with_bn_stats(sequential(0), np.random.rand(16, 8, 8, 1).astype("float32"))
    ad = KerasAdapter(m)
    assert [e.name for e in ad.layout] == [v.path for v in m.weights]
    kinds = [e.kind for e in ad.layout]
    assert kinds.count("buffer") == 2 and ad.dim == sum(int(np.prod(v.shape)) for v in m.weights)
    other = sequential(1)
    g = ad.genome(other)
    assert torch.equal(KerasAdapter(other).genome(), g)
    clone = ad.to_model(g)
    for a, b in zip(clone.get_weights(), other.get_weights()):
        assert np.array_equal(a, b)
    for a, b in zip(ad.get_weights(g), other.get_weights()):
        assert np.array_equal(a, b)
    assert torch.equal(ad.genome(ad.load(g, sequential(2))), g)


def test_forward_reads_genome_views_and_matches_keras():
    m = functional(0)
    ad = KerasAdapter(m)
    x = np.random.rand(5, 64).astype("float32")
    pop = TensorPopulation(1, ad.dim, device="cpu")
    pop.buffer[0].copy_(ad.genome(functional(3)))
    out = ad.forward(pop.buffer[0], torch.from_numpy(x))
    ref = keras.ops.convert_to_numpy(functional(3)(x, training=False))
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(ad.genome(), KerasAdapter(functional(0)).genome())  # the template is untouched


def test_other_architecture_is_named():
    ad = KerasAdapter(sequential(0))
    with pytest.raises(ValueError, match=r"weight 0.*\(3, 3, 1, 4\).*\(3, 3, 1, 6\)"):
        keras.utils.set_random_seed(0)
        ad.genomes([ad.model, keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3)])])
    with pytest.raises(ValueError, match="expects"):
        ad.load(torch.zeros(3))


def test_same_shapes_other_layers_are_refused_and_rebuilds_accepted():
    """Built twice, one architecture gets other auto-names (dense, dense_1): accepted. Layers named
    otherwise with the same shapes: refused, naming the weight."""

    def mlp(names=(None, None)):
        return keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(16, name=names[0]), keras.layers.Dense(10, name=names[1])]
        )

    ad = KerasAdapter(mlp())
    assert ad.genomes([ad.model, mlp(), mlp()]).shape[0] == 3
    with pytest.raises(ValueError, match=r"named like '.*dense.*/kernel', got '.*/encoder/kernel'"):
        ad.genomes([ad.model, mlp(("encoder", "decoder"))])


def test_moving_variance_kept_positive():
    from deap import base

    ad = KerasAdapter(sequential(0))
    tb = base.Toolbox()
    tb.register("mutate", mutSparseGaussian, mu=0.0, sigma=50.0, indpb=0.5)
    tb.decorate("mutate", ad.keep_valid())
    g = ad.genome().clone()
    tb.mutate(g)
    var = [v for k, v in ad.tensors(g).items() if k.endswith("moving_variance")][0]
    assert (var >= ad.var_floor).all()


def train_keras_mlp(train, seed):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    m.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    X, y = train
    m.fit(X.numpy(), y.numpy(), epochs=15, batch_size=100, verbose=0, shuffle=True)
    return m


def test_merge_keras_models_on_digits(digits, digit_mlps, capsys):
    models = [train_keras_mlp(digits["train"], s) for s in (1, 2)]
    mega_deap.merge(models, digits["val"], popsize=4, ngen=0, seed=0, verbose=True, progress=False, gate=None)
    first = capsys.readouterr().out.splitlines()[0]  # Keras 3 layers are torch modules here: the adapter decides
    assert first.startswith("align: none: the models are Sequentials with KerasAdapter"), first
    r = mega_deap.merge(models, digits["val"], popsize=10, ngen=5, seed=0, verbose=False, metric="accuracy")
    maxes = r.logbook.select("max")
    assert all(b >= a for a, b in zip(maxes, maxes[1:])) and r.fitness > 0.8
    assert isinstance(r.model, keras.Model)
    X, y = digits["val"]
    acc = float((keras.ops.convert_to_numpy(r.model(X.numpy())).argmax(1) == y.numpy()).mean())
    assert acc == pytest.approx(r.fitness, abs=1e-9)
    assert r.gate_p is not None  # the significance gate ran on the Keras models too
    assert r.align is None  # align="auto" aligns PyTorch models only: Keras models merge unaligned
    # the same merge through the torch adapter, equivalent models: fitness of the same order
    rt = mega_deap.merge(digit_mlps, digits["val"], popsize=10, ngen=5, seed=0, verbose=False, metric="accuracy")
    assert abs(rt.fitness - r.fitness) < 0.1


def test_batched_map_calls_the_model_not_predict(digits):
    m = train_keras_mlp(digits["train"], 1)
    ad = KerasAdapter(m)
    calls = {"predict": 0}
    m.predict = lambda *a, **k: calls.__setitem__("predict", calls["predict"] + 1)
    ev = accuracy(ad, *digits["val"], batch_size=128)
    inds = [ad.genome() for _ in range(3)]
    assert len(set(ev.scores(inds))) == 1 and calls["predict"] == 0


def test_importing_mega_deap_does_not_import_keras():
    code = "import sys, mega_deap, mega_deap.adapters; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("backend,module", [("jax", "jax"), ("tensorflow", "tensorflow")])
def test_other_backends_where_installed(backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    code = (
        "import numpy as np, keras, torch; from mega_deap.adapters import KerasAdapter\n"
        "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])\n"
        "ad = KerasAdapter(m); g = ad.genome(); x = np.ones((2, 4), 'float32')\n"
        "ref = keras.ops.convert_to_numpy(m(x)); out = ad.forward(g, torch.from_numpy(x)).numpy()\n"
        "assert np.allclose(out, ref, atol=1e-6), (out, ref); print('ok')"
    )
    env = dict(os.environ, KERAS_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
