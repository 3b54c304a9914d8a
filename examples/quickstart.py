# %% [markdown]
# # conceptlens quickstart
# Concepts of EfficientNet-Lite0 (bundled ImageNet weights) for one class, found on the bundled photos.
# Open as a notebook (VS Code, Jupyter with jupytext) or run it: `python examples/quickstart.py`.

# %%
import conceptlens as cl

model = cl.models.load("efficientnet_lite0")  # offline weights, eval mode
split = cl.ModelSplit(model, layer="auto")  # the last spatial layer, after the head's activation
x = cl.data.sample_images(model.preset)  # 13 photos, normalised for the model

# %% Five concepts for "Egyptian cat" (ICE: NMF of the layer's activations); the card lists them
ex = cl.ConceptExplainer(split, method="nmf", n_concepts=5, seed=0).fit(x, target="Egyptian cat")
print(cl.metrics.fidelity(ex, x))
ex  # noqa: B018 - a notebook shows a cell's last value (here the explainer's card)

# %% How the concepts make up the cat logit on the first two photos (a bar chart per photo)
e = ex.explain(x[:2])
e  # noqa: B018

# %% The concepts' prototypes as ICE heatmaps, and one image's contributions, as matplotlib figures
ex.plot_concepts(x, n_prototypes=3).savefig("concepts.png")
e.plot(0).savefig("contributions.png")

# %% Without its most important concept, how much does the cat logit drop?
top = int(ex.importance_.argmax())
ex.edit(x[:2], remove=top)

# %% The same concept maps, shaped like a Captum layer attribution ([N, k, h, w])
cl.interop.CaptumConcepts(ex).attribute(x[:2]).shape  # noqa: B018
