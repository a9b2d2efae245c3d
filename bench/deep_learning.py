"""``ngvi.optax.structured_ngd`` on scikit-learn's digits: an MLP and a CNN against Adam and AdamW.

    python bench/deep_learning.py [--epochs 40] [--seeds 0,1,2] [--models mlp,cnn]

Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images, 10 classes), pixels
/ 16, a stratified 75/25 split (``random_state=0``); batches of 64, reshuffled
every epoch by the seed. Models in plain JAX: ``mlp`` 64-128-10 (ReLU);
``cnn`` two 3x3 convolutions (16 and 32 channels, ReLU, SAME), a 2x2 average
pool and a 512-10 dense layer. Cross-entropy loss. Methods:

* ``adam``: ``optax.adam(1e-3)``; ``adamw``: ``optax.adamw(1e-3, weight_decay=1e-4)``;
* ``sngd``: ``structured_ngd`` (block size 4, ``learning_rate=0.1`` (schedule below),
  ``damping=1e-3``), curvature from per-example gradients at labels drawn from the model
  (the Monte-Carlo Fisher), refreshed every ``--update-every`` steps (per-example gradients only on those);
* ``vogn``: the diagonal variational rule, ``structured_ngd(block_size=0)``
  with the prior ``N(0, I)`` (weight decay and damping ``1/N``), gradients at a
  draw of the weights from ``N(mu, S^-1 / N)`` (:func:`ngvi.optax.sample_params`),
  predictions averaged over 16 draws;
* ``svgd``: the same variational rule with ``block_size=4`` (Kronecker block factors);
* ``ivon``: ``svgd`` with the curvature from the weight noise instead of
  per-example gradients (``noise_scale=1/sqrt(N)``, ``sampled_params``: the
  variational Hessian estimate ``sym(Sigma^-1 (w - mu) g^T)``), refreshed every step.

The natural-gradient methods use a cosine decay of the learning rate to a tenth
over the run; Adam and AdamW a constant one. Every epoch: test accuracy, test
NLL (mean cross-entropy) and expected calibration error (15 equal-width bins of
the top probability), against the training wall time so far (evaluation and
the first step's compilation excluded; compile time reported apart), and the
mean time per step. All methods of a seed run in one process, one after
another. Results: ``bench/results/deep_learning.json``, ``.md`` and ``.png``.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ngvi.optax as ngd

RESULTS = os.path.join(os.path.dirname(__file__), "results")
BATCH, PREDICTIVE_DRAWS, BINS = 64, 16, 15
METHODS = ("adam", "adamw", "sngd", "vogn", "svgd", "ivon")


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    return train_test_split(x, data.target, test_size=0.25, stratify=data.target, random_state=0)


def init_params(name, key):
    keys = jax.random.split(key, 3)
    normal = lambda k, shape, fan_in: jax.random.normal(k, shape) * np.sqrt(2.0 / fan_in)
    if name == "mlp":
        return {"w1": normal(keys[0], (64, 128), 64), "b1": jnp.zeros(128),
                "w2": normal(keys[1], (128, 10), 128), "b2": jnp.zeros(10)}
    return {"c1": normal(keys[0], (3, 3, 1, 16), 9), "d1": jnp.zeros(16),
            "c2": normal(keys[1], (3, 3, 16, 32), 144), "d2": jnp.zeros(32),
            "w": normal(keys[2], (512, 10), 512), "b": jnp.zeros(10)}


def logits(name, params, x):
    """Logits of one image ``x`` (8 x 8 x 1)."""
    if name == "mlp":
        return jax.nn.relu(x.reshape(-1) @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    conv = lambda h, w: jax.lax.conv_general_dilated(h[None], w, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    h = jax.nn.relu(conv(x, params["c1"]) + params["d1"])
    h = jax.nn.relu(conv(h, params["c2"]) + params["d2"])
    h = h.reshape(4, 2, 4, 2, 32).mean(axis=(1, 3))
    return h.reshape(-1) @ params["w"] + params["b"]


def metrics(probs, y):
    """Accuracy, NLL and expected calibration error of predicted class probabilities."""
    top = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    bins = np.minimum((top * BINS).astype(int), BINS - 1)
    ece = sum(abs(correct[bins == i].mean() - top[bins == i].mean()) * np.mean(bins == i)
              for i in range(BINS) if np.any(bins == i))
    return dict(accuracy=float(correct.mean()), nll=float(-np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12))),
                ece=float(ece))


def make_method(method, name, num_train, num_steps, update_every):
    """``(optimiser, variational, uses_curvature)``; ``uses_curvature`` is
    ``"noise"`` for the weight-noise curvature (every step)."""
    cosine = optax.cosine_decay_schedule(0.1, num_steps, alpha=0.1)
    if method == "adam":
        return optax.adam(1e-3), False, False
    if method == "adamw":
        return optax.adamw(1e-3, weight_decay=1e-4), False, False
    if method == "sngd":
        return ngd.structured_ngd(cosine, block_size=4, damping=1e-3, update_every=update_every), False, True
    prior = 1.0 / num_train
    block_size = 0 if method == "vogn" else 4
    if method == "ivon":
        rule = ngd.structured_ngd(cosine, block_size=4, damping=prior, noise_scale=1.0 / np.sqrt(num_train))
        return optax.chain(optax.add_decayed_weights(prior), rule), True, "noise"
    opt = optax.chain(optax.add_decayed_weights(prior),
                      ngd.structured_ngd(cosine, block_size=block_size, damping=prior, update_every=update_every))
    return opt, True, True


def run(method, name, seed, epochs, update_every, data):
    x_train, x_test, y_train, y_test = (jnp.asarray(a) for a in data)
    num_train = x_train.shape[0]
    steps_per_epoch = num_train // BATCH
    opt, variational, uses_curvature = make_method(method, name, num_train, epochs * steps_per_epoch, update_every)
    example_loss = lambda params, x, y: -jax.nn.log_softmax(logits(name, params, x))[y]
    batch_loss = lambda params, x, y: jnp.mean(jax.vmap(example_loss, (None, 0, 0))(params, x, y))
    noise_state = lambda state: state[1] if variational else state

    def weights(key, params, state):
        return ngd.sample_params(key, params, noise_state(state), 1.0 / np.sqrt(num_train)) if variational else params

    def step(params, state, key, x, y, refresh):
        noise_key, label_key = jax.random.split(key)
        at = weights(noise_key, params, state)
        grads = jax.grad(batch_loss)(at, x, y)
        extra = dict(sampled_params=at) if uses_curvature == "noise" else {}
        if refresh and uses_curvature is True:
            sampled = jax.random.categorical(label_key, jax.vmap(lambda xi: logits(name, at, xi))(x))
            extra = dict(curvature_grads=jax.vmap(jax.grad(example_loss), (None, 0, 0))(at, x, sampled))
        updates, state = opt.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    plain_step = jax.jit(lambda p, s, k, x, y: step(p, s, k, x, y, False))
    refresh_step = jax.jit(lambda p, s, k, x, y: step(p, s, k, x, y, True))

    @jax.jit
    def predict(key, params, state):
        probs = lambda w: jax.nn.softmax(jax.vmap(lambda xi: logits(name, w, xi))(x_test))
        if not variational:
            return probs(params)
        return jnp.mean(jax.vmap(lambda k: probs(weights(k, params, state)))(jax.random.split(key, PREDICTIVE_DRAWS)),
                        axis=0)

    key = jax.random.PRNGKey(seed)
    params = init_params(name, jax.random.fold_in(key, 0))
    state = opt.init(params)
    order_rng = np.random.default_rng(seed)
    curve, step_times, compile_s, train_s, count, compiled = [], [], 0.0, 0.0, 0, set()
    for epoch in range(epochs):
        order = order_rng.permutation(num_train)
        for i in range(steps_per_epoch):
            idx = order[i * BATCH:(i + 1) * BATCH]
            refresh = uses_curvature is True and count % update_every == 0
            fn = refresh_step if refresh else plain_step
            t0 = time.perf_counter()
            params, state = jax.block_until_ready(fn(params, state, jax.random.fold_in(key, count + 1),
                                                     x_train[idx], y_train[idx]))
            elapsed = time.perf_counter() - t0
            if fn not in compiled:  # its first call compiles it
                compile_s += elapsed
                compiled.add(fn)
            else:
                train_s += elapsed
                step_times.append(elapsed)
            count += 1
        probs = np.asarray(predict(jax.random.fold_in(jax.random.fold_in(key, 2**31), epoch), params, state))
        curve.append(dict(epoch=epoch + 1, seconds=train_s, **metrics(probs, np.asarray(y_test))))
    finite = all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves((params, state)))
    return dict(method=method, model=name, seed=seed, compile_s=compile_s, step_ms=1e3 * float(np.median(step_times)),
                mean_step_ms=1e3 * float(np.mean(step_times)), finite=finite, curve=curve, **curve[-1])


def summary(rows, epochs, update_every):
    lines = [
        "# ngvi.optax.structured_ngd on digits", "",
        f"    python bench/deep_learning.py --epochs {epochs} --update-every {update_every}", "",
        "Final test metrics after the last epoch, mean (min-max) over seeds; time per step is the mean over "
        "steps after compilation (per-example gradients included on the refresh steps), training seconds "
        "exclude evaluation and compilation.", "",
        "| model | method | accuracy | NLL | ECE | ms/step | ratio to Adam | train s | compile s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in sorted({r["model"] for r in rows}):
        adam = np.mean([r["mean_step_ms"] for r in rows if r["model"] == name and r["method"] == "adam"])
        for method in METHODS:
            rs = [r for r in rows if r["model"] == name and r["method"] == method]
            if not rs:
                continue
            cell = lambda k, f: f"{np.mean([r[k] for r in rs]):{f}} ({min(r[k] for r in rs):{f}}-{max(r[k] for r in rs):{f}})"
            step = np.mean([r["mean_step_ms"] for r in rs])
            lines.append(f"| {name} | {method} | {cell('accuracy', '.3f')} | {cell('nll', '.3f')} | {cell('ece', '.3f')} "
                         f"| {step:.2f} | {step / adam:.2f} | {np.mean([r['seconds'] for r in rs]):.1f} "
                         f"| {np.mean([r['compile_s'] for r in rs]):.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    """Test accuracy, NLL and ECE against training seconds, the seeds' mean per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(len(names), 3, figsize=(13, 3.6 * len(names)), squeeze=False)
    for row_axes, name in zip(axes, names):
        for method in METHODS:
            rs = [r for r in rows if r["model"] == name and r["method"] == method]
            if not rs:
                continue
            mean = lambda key: np.mean([[c[key] for c in r["curve"]] for r in rs], axis=0)
            for ax, key in zip(row_axes, ("accuracy", "nll", "ece")):
                ax.plot(mean("seconds"), mean(key), label=method)
                ax.set(xlabel="training seconds", ylabel=f"test {key}", title=name)
        row_axes[1].set_yscale("log")
        row_axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--update-every", type=int, default=10)
    parser.add_argument("--out", default="deep_learning")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from the stored results")
    args = parser.parse_args()
    if args.plot_only:
        with open(os.path.join(RESULTS, f"{args.out}.json")) as f:
            plot(json.load(f)["rows"], os.path.join(RESULTS, f"{args.out}.png"))
        return
    data = digits()
    rows = []
    for name in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for method in args.methods.split(","):
                row = run(method, name, seed, args.epochs, args.update_every, data)
                rows.append(row)
                print(f"{name} {method:<6} seed {seed}: acc {row['accuracy']:.3f} nll {row['nll']:.3f} "
                      f"ece {row['ece']:.3f} {row['mean_step_ms']:.2f} ms/step, compile {row['compile_s']:.1f} s"
                      f"{'' if row['finite'] else ' NON-FINITE'}", flush=True)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.out}.json"), "w") as f:
        json.dump(dict(rows=rows), f, indent=1)
    plot(rows, os.path.join(RESULTS, f"{args.out}.png"))
    text = summary(rows, args.epochs, args.update_every)
    with open(os.path.join(RESULTS, f"{args.out}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
