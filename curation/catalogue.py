"""The embedded world's catalogue: every pre-training source and downstream set, *declared*.

A declaration is a distribution over the latent factors of :mod:`curation.render` (concept,
texture, colour, background, clutter, style, scale, ...): a source adds a caption model and an
image-size model, a downstream set adds a labelling rule (each class fixes some factors). The
caption vocabularies live here too, checked at import so that no caption word is a concept name.

This module declares and generates nothing: :mod:`curation.generate` samples factors and
captions from these declarations, :mod:`curation.similarity` measures how alike they are, and
:mod:`curation.world` writes the world. ``downstream.sets`` reads the set names, metrics and
descriptions from here (one copy of that truth).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation import render as R


@dataclass(frozen=True)
class Distribution:
    """A distribution over the latent factors. Weights are unnormalised; a missing name weighs 0."""

    concepts: dict[str, float]
    textures: dict[str, float]
    colours: dict[str, float]
    backgrounds: dict[str, float]
    styles: dict[str, float]
    scale: tuple[float, float] = (0.35, 0.8)  # object half-size range (1.0 spans the image)
    jitter: float = 0.25  # max |offset| of the object centre, image units
    rotation: float = 25.0  # max |rotation| in degrees (satellite images: any rotation)
    clutter: float = 0.5  # mean number of distractor objects (Poisson, at most 4)
    clutter_concepts: dict[str, float] | None = None  # default: ``concepts``
    noise: tuple[float, float] = (0.0, 0.02)  # extra pixel-noise std range


@dataclass(frozen=True)
class CaptionModel:
    """How a source's captions relate to its images (probabilities per sample)."""

    p_correct: float  # names the depicted concept
    p_hypernym: float  # names only its group ("an animal")
    p_wrong: float  # names another concept; the rest names no concept at all
    p_texture: float = 0.2
    p_colour: float = 0.3
    p_style: float = 0.2
    p_clutter: float = 0.1  # also names a distractor concept (when there is one)
    filler: tuple[str, ...] = ()
    n_filler: tuple[int, int] = (0, 2)
    score_noise: float = 0.025  # std of the noise on the precomputed image-text similarity
    # Share of captions written in another language (German, Spanish or French, equally): they
    # name no concept in English, so they yield no label; json ``lang`` records the truth.
    p_foreign: float = 0.0


@dataclass(frozen=True)
class ImageSizeModel:
    """The size images had before they were resized to the world's 32x32 (img2dataset's
    ``original_width``/``original_height``): a log-normal shorter side, a common aspect ratio
    (or, for a few, an extreme panorama), landscape or portrait."""

    median_short: float  # median shorter side in pixels
    sigma: float = 0.45  # std of log(shorter side)
    aspects: tuple[tuple[str, float], ...] = (("4:3", 0.4), ("3:2", 0.25), ("1:1", 0.2), ("16:9", 0.15))
    p_portrait: float = 0.25  # of the non-square images
    p_panorama: float = 0.03  # longer side 3x to 6x the shorter
    min_side: int = 16
    max_side: int = 12000


@dataclass(frozen=True)
class SourceDecl:
    name: str
    kind: str  # "image-text" or "labelled"
    description: str
    pool: int  # samples at scale 1.0
    dist: Distribution
    caption: CaptionModel
    image_size: ImageSizeModel = ImageSizeModel(400.0)


@dataclass(frozen=True)
class SetDecl:
    name: str
    description: str
    metric: str  # "top1" or "balanced_acc"
    label_rule: str  # human-readable: which factors the label is
    classes: tuple[tuple[str, dict[str, str]], ...]  # (class name, factor overrides)
    dist: Distribution
    class_weights: tuple[float, ...] | None = None  # None: balanced


def _w(vocab: Iterable[str], default: float = 1.0, **over: float) -> dict[str, float]:
    out = {v: float(default) for v in vocab}
    for k, val in over.items():
        if k not in out:
            raise ValueError(f"unknown factor value {k!r}; valid: {', '.join(out)}")
        out[k] = float(val)
    return {k: v for k, v in out.items() if v > 0}


def concept_weights(
    animal: float = 1, plant: float = 1, object: float = 1, symbol: float = 1, **over: float
) -> dict[str, float]:
    """Concept weights by group (animal, plant, object, symbol), single concepts overridden by name."""
    g = {"animal": animal, "plant": plant, "object": object, "symbol": symbol}
    out = {c.name: float(g[c.group]) for c in R.CONCEPTS}
    for k, val in over.items():
        if k not in out:
            raise ValueError(f"unknown concept {k!r}; valid: {', '.join(out)}")
        out[k] = float(val)
    return {k: v for k, v in out.items() if v > 0}


def _only(vocab: Iterable[str], names: Iterable[str] | dict[str, float]) -> dict[str, float]:
    vocab = list(vocab)
    items = names.items() if isinstance(names, dict) else ((n, 1.0) for n in names)
    out = {}
    for n, w in items:
        if n not in vocab:
            raise ValueError(f"unknown factor value {n!r}; valid: {', '.join(vocab)}")
        out[n] = float(w)
    return out


T, C, B, S = R.TEXTURES, R.COLOUR_NAMES, R.BACKGROUNDS, R.STYLES

HYPERNYMS = {
    "animal": ("animal", "pet", "creature", "wildlife"),
    "plant": ("plant", "nature", "greenery"),
    "object": ("object", "thing", "item"),
    "symbol": ("symbol", "shape", "sign", "logo"),
}
STYLE_PHRASES = {
    "photo": ("a photo of", "photograph of", "a picture of"),
    "clipart": ("clipart of", "cartoon", "vector illustration of", "an icon of"),
    "sketch": ("a sketch of", "pencil drawing of", "line drawing of"),
    "satellite": ("aerial view of", "satellite image of", "top-down view of"),
    "infrared": ("trail camera shot of", "night vision image of", "infrared photo of"),
    "closeup": ("macro shot of", "close-up of"),
}
SCENE_WORDS = {
    "plain": "background",
    "studio": "studio",
    "gradient": "abstract",
    "sky": "sky",
    "grass": "lawn",
    "indoor": "room",
    "water": "lake",
    "sand": "beach",
    "fields": "farmland",
    "foliage": "forest",
    "night": "night",
}

# Captions in other languages (CaptionModel.p_foreign): an opener, a colour now and then, a noun
# that names no concept, where the scene is, and filler. None of these words is an English concept
# name (checked below), so such captions never yield a label.
FOREIGN_LANGS = ("de", "es", "fr")
FOREIGN_VOCAB: dict[str, dict[str, Any]] = {
    "de": {
        "opener": ("ein foto von", "ein bild von", "eine aufnahme mit", "eine zeichnung von", "die ansicht von"),
        "noun": ("einem motiv", "einem gegenstand", "einer szene", "etwas", "einem muster", "der sache"),
        "colour": {
            "red": "rot",
            "orange": "orangefarben",
            "yellow": "gelb",
            "green": "grün",
            "blue": "blau",
            "purple": "lila",
            "pink": "rosa",
            "brown": "braun",
            "black": "schwarz",
            "white": "weiß",
            "gray": "grau",
            "teal": "türkis",
        },
        "scene": {
            "plain": "vor dem hintergrund",
            "studio": "im studio",
            "gradient": "mit farbverlauf",
            "sky": "unter dem himmel",
            "grass": "auf der wiese",
            "indoor": "in der wohnung",
            "water": "am see",
            "sand": "am strand",
            "fields": "über den feldern",
            "foliage": "im wald",
            "night": "in der nacht",
        },
        "filler": ("schön", "neu", "günstig", "kaufen", "urlaub", "sommer", "und", "mit", "kostenlos", "hochwertig"),
    },
    "es": {
        "opener": ("una foto de", "una imagen de", "un dibujo de", "la vista de", "una ilustración de"),
        "noun": ("un objeto", "una escena", "algo", "un motivo", "un patrón", "una cosa"),
        "colour": {
            "red": "rojo",
            "orange": "naranja",
            "yellow": "amarillo",
            "green": "verde",
            "blue": "azul",
            "purple": "morado",
            "pink": "rosado",
            "brown": "marrón",
            "black": "negro",
            "white": "blanco",
            "gray": "gris",
            "teal": "turquesa",
        },
        "scene": {
            "plain": "sobre el fondo",
            "studio": "en el estudio",
            "gradient": "con degradado",
            "sky": "bajo el cielo",
            "grass": "sobre la hierba",
            "indoor": "en la casa",
            "water": "junto al lago",
            "sand": "en la playa",
            "fields": "sobre los campos",
            "foliage": "en el bosque",
            "night": "por la noche",
        },
        "filler": ("bonito", "nuevo", "barato", "comprar", "vacaciones", "verano", "gratis", "calidad", "y", "con"),
    },
    "fr": {
        "opener": ("une photographie de", "un dessin de", "une illustration de", "la vue de", "un cliché de"),
        "noun": ("un objet", "une scène", "quelque chose", "un motif", "une chose", "un sujet"),
        "colour": {
            "red": "rouge",
            "orange": "orangé",
            "yellow": "jaune",
            "green": "vert",
            "blue": "bleu",
            "purple": "violet",
            "pink": "rose",
            "brown": "marron",
            "black": "noir",
            "white": "blanc",
            "gray": "gris",
            "teal": "turquoise",
        },
        "scene": {
            "plain": "sur le fond",
            "studio": "en studio",
            "gradient": "avec un dégradé",
            "sky": "sous le ciel",
            "grass": "sur la pelouse",
            "indoor": "dans la maison",
            "water": "au bord du lac",
            "sand": "sur la plage",
            "fields": "au-dessus des champs",
            "foliage": "dans la forêt",
            "night": "pendant la nuit",
        },
        "filler": ("beau", "nouveau", "pas", "cher", "acheter", "vacances", "été", "gratuit", "qualité", "et", "avec"),
    },
}

_LAION_FILLER = (
    "free",
    "download",
    "hd",
    "wallpaper",
    "stock",
    "image",
    "best",
    "cheap",
    "sale",
    "png",
    "high",
    "quality",
    "new",
    "2019",
    "buy",
    "online",
)
_CC_FILLER = ("the", "with", "on", "in", "person", "view", "beautiful", "at", "during", "some")

SOURCE_DECLS: tuple[SourceDecl, ...] = (
    SourceDecl(
        "imagenet",
        "labelled",
        "curated, class-balanced, object-centric photographs of every concept, one label each (ImageNet-style)",
        6000,
        Distribution(
            concept_weights(),
            _w(T, plain=3),
            _w(C),
            _w(B, night=0.3, fields=0),
            _only(S, {"photo": 0.88, "clipart": 0.04, "sketch": 0.04, "closeup": 0.04}),
            scale=(0.4, 0.85),
            jitter=0.15,
            rotation=15,
            clutter=0.3,
            noise=(0.0, 0.02),
        ),
        CaptionModel(1.0, 0.0, 0.0, p_texture=0, p_colour=0, p_style=0, p_clutter=0, score_noise=0.02),
        ImageSizeModel(
            375, sigma=0.2, aspects=(("4:3", 0.7), ("3:2", 0.1), ("1:1", 0.15), ("16:9", 0.05)), p_panorama=0.005
        ),
    ),
    SourceDecl(
        "laion",
        "image-text",
        "web crawl filtered by CLIP score: every style and scene, noisy alt-text with SEO filler",
        8000,
        Distribution(
            concept_weights(),
            _w(T),
            _w(C),
            _w(B),
            _only(
                S, {"photo": 0.45, "clipart": 0.18, "sketch": 0.1, "satellite": 0.1, "infrared": 0.07, "closeup": 0.1}
            ),
            scale=(0.25, 1.3),
            jitter=0.4,
            rotation=90,
            clutter=1.0,
            noise=(0.0, 0.04),
        ),
        CaptionModel(
            0.5,
            0.1,
            0.15,
            p_texture=0.25,
            p_colour=0.35,
            p_style=0.3,
            p_clutter=0.25,
            filler=_LAION_FILLER,
            n_filler=(1, 6),
            score_noise=0.035,
            p_foreign=0.10,
        ),
        ImageSizeModel(
            240, sigma=0.6, aspects=(("4:3", 0.3), ("3:2", 0.2), ("1:1", 0.35), ("16:9", 0.15)), p_panorama=0.04
        ),
    ),
    SourceDecl(
        "shutterstock",
        "image-text",
        "stock photography and vector art: centred studio shots, faithful descriptive captions",
        3000,
        Distribution(
            concept_weights(object=1.5, symbol=1.5),
            _w(T),
            _w(C),
            _only(B, {"studio": 4, "plain": 2, "gradient": 1}),
            _only(S, {"photo": 0.6, "clipart": 0.35, "sketch": 0.05}),
            scale=(0.5, 0.85),
            jitter=0.08,
            rotation=10,
            clutter=0.1,
            noise=(0.0, 0.01),
        ),
        CaptionModel(
            0.88,
            0.05,
            0.02,
            p_texture=0.5,
            p_colour=0.7,
            p_style=0.5,
            p_clutter=0.0,
            filler=("isolated", "on", "white", "background", "studio", "shot", "design", "element", "vector"),
            n_filler=(1, 4),
            score_noise=0.02,
            p_foreign=0.01,
        ),
        ImageSizeModel(
            500,
            sigma=0.3,
            aspects=(("3:2", 0.45), ("4:3", 0.25), ("1:1", 0.15), ("16:9", 0.15)),
            p_portrait=0.3,
            p_panorama=0.02,
        ),
    ),
    SourceDecl(
        "redcaps",
        "image-text",
        "Reddit photo posts: mostly pets and animals at home, chatty but usually on-topic titles",
        3000,
        Distribution(
            concept_weights(animal=5, plant=1, object=1, symbol=0.3),
            _w(T, plain=3, spots=2, stripes=2, default=0.5),
            _w(C, brown=2, black=2, white=2, gray=2, orange=2),
            _only(B, {"indoor": 4, "grass": 2, "plain": 1, "sky": 1, "studio": 1, "foliage": 1}),
            _only(S, {"photo": 0.9, "closeup": 0.05, "clipart": 0.05}),
            scale=(0.4, 0.9),
            jitter=0.2,
            rotation=20,
            clutter=0.7,
            noise=(0.0, 0.03),
        ),
        CaptionModel(
            0.7,
            0.12,
            0.05,
            p_texture=0.15,
            p_colour=0.4,
            p_style=0.05,
            p_clutter=0.15,
            filler=(
                "my",
                "our",
                "meet",
                "he",
                "she",
                "loves",
                "today",
                "finally",
                "little",
                "buddy",
                "good",
                "boy",
                "girl",
                "this",
                "is",
            ),
            n_filler=(1, 5),
            score_noise=0.03,
            p_foreign=0.01,
        ),
        ImageSizeModel(
            450,
            sigma=0.4,
            aspects=(("4:3", 0.5), ("1:1", 0.15), ("16:9", 0.2), ("3:2", 0.15)),
            p_portrait=0.45,
            p_panorama=0.02,
        ),
    ),
    SourceDecl(
        "yfcc",
        "image-text",
        "Flickr uploads: outdoor photos incl. night shots, small off-centre subjects, captions mostly camera metadata",
        3000,
        Distribution(
            concept_weights(animal=1.5, plant=1.5, object=1, symbol=0.5),
            _w(T),
            _w(C),
            _only(B, {"sky": 2, "grass": 2, "water": 2, "sand": 1, "foliage": 2, "night": 1, "indoor": 1, "fields": 1}),
            _only(S, {"photo": 0.8, "infrared": 0.1, "satellite": 0.05, "closeup": 0.05}),
            scale=(0.2, 0.7),
            jitter=0.45,
            rotation=30,
            clutter=1.5,
            noise=(0.01, 0.05),
        ),
        CaptionModel(
            0.22,
            0.08,
            0.1,
            p_texture=0.05,
            p_colour=0.1,
            p_style=0.05,
            p_clutter=0.1,
            filler=(
                "img",
                "dsc",
                "jpg",
                "vacation",
                "trip",
                "2008",
                "canon",
                "nikon",
                "summer",
                "family",
                "flickr",
                "untitled",
            ),
            n_filler=(1, 5),
            score_noise=0.03,
            p_foreign=0.08,
        ),
        ImageSizeModel(
            260,
            sigma=0.5,
            aspects=(("4:3", 0.5), ("3:2", 0.3), ("1:1", 0.1), ("16:9", 0.1)),
            p_portrait=0.3,
            p_panorama=0.05,
        ),
    ),
    SourceDecl(
        "wit",
        "image-text",
        "Wikipedia images: encyclopedic photos, drawings, diagrams and maps with reference-style captions",
        3000,
        Distribution(
            concept_weights(animal=1.5, plant=2, object=1, symbol=1.5),
            _w(T),
            _w(C),
            _w(B, studio=2, plain=2),
            _only(S, {"photo": 0.4, "sketch": 0.25, "clipart": 0.15, "satellite": 0.12, "closeup": 0.08}),
            scale=(0.4, 0.9),
            jitter=0.15,
            rotation=15,
            clutter=0.3,
            noise=(0.0, 0.02),
        ),
        CaptionModel(
            0.68,
            0.12,
            0.05,
            p_texture=0.3,
            p_colour=0.3,
            p_style=0.45,
            p_clutter=0.05,
            filler=(
                "illustration",
                "of",
                "the",
                "from",
                "encyclopedia",
                "article",
                "historical",
                "diagram",
                "plate",
                "museum",
                "specimen",
            ),
            n_filler=(1, 4),
            score_noise=0.025,
            p_foreign=0.40,
        ),
        ImageSizeModel(480, sigma=0.45, p_portrait=0.35, p_panorama=0.03),
    ),
    SourceDecl(
        "cc3m",
        "image-text",
        "Conceptual Captions: alt-text rewritten into hypernyms ('an animal on the grass'), mostly photos",
        3000,
        Distribution(
            concept_weights(),
            _w(T),
            _w(C),
            _w(B, fields=0.3),
            _only(S, {"photo": 0.75, "clipart": 0.15, "sketch": 0.05, "closeup": 0.05}),
            scale=(0.3, 0.8),
            jitter=0.3,
            rotation=25,
            clutter=0.8,
            noise=(0.0, 0.02),
        ),
        CaptionModel(
            0.4,
            0.35,
            0.05,
            p_texture=0.15,
            p_colour=0.3,
            p_style=0.2,
            p_clutter=0.2,
            filler=_CC_FILLER,
            n_filler=(1, 4),
            score_noise=0.025,
            p_foreign=0.0,
        ),
        ImageSizeModel(420, sigma=0.35, p_panorama=0.02),
    ),
    SourceDecl(
        "cc12m",
        "image-text",
        "Conceptual 12M: like CC3M with looser filtering, more styles and fewer hypernym rewrites",
        3000,
        Distribution(
            concept_weights(),
            _w(T),
            _w(C),
            _w(B),
            _only(
                S, {"photo": 0.6, "clipart": 0.15, "sketch": 0.08, "satellite": 0.05, "infrared": 0.04, "closeup": 0.08}
            ),
            scale=(0.3, 1.0),
            jitter=0.35,
            rotation=40,
            clutter=0.9,
            noise=(0.0, 0.03),
        ),
        CaptionModel(
            0.48,
            0.25,
            0.08,
            p_texture=0.2,
            p_colour=0.3,
            p_style=0.25,
            p_clutter=0.2,
            filler=_CC_FILLER + ("stock", "image"),
            n_filler=(1, 5),
            score_noise=0.03,
            p_foreign=0.02,
        ),
        ImageSizeModel(400, sigma=0.4, p_panorama=0.03),
    ),
)


def _classes_by(factor: str, names: Iterable[str]) -> tuple[tuple[str, dict[str, str]], ...]:
    return tuple((n, {factor: n}) for n in names)


_DN_CLASSES = (
    "bird",
    "cat",
    "fish",
    "bear",
    "snake",
    "tree",
    "flower",
    "mushroom",
    "house",
    "cup",
    "umbrella",
    "key",
    "bottle",
    "boat",
    "star",
)

SET_DECLS: tuple[SetDecl, ...] = (
    SetDecl(
        "cifar100",
        "small cluttered photos of many everyday concepts (CIFAR-100-like)",
        "top1",
        "concept",
        _classes_by(
            "concept",
            (
                "cat",
                "dog",
                "rabbit",
                "bear",
                "mouse",
                "bird",
                "fish",
                "turtle",
                "snake",
                "deer",
                "tree",
                "flower",
                "mushroom",
                "house",
                "cup",
                "umbrella",
                "key",
                "bottle",
                "boat",
                "bell",
            ),
        ),
        Distribution(
            {},
            _w(T),
            _w(C),
            _only(B, ("sky", "grass", "indoor", "water", "sand", "gradient", "foliage")),
            {"photo": 1.0},
            scale=(0.3, 0.65),
            jitter=0.35,
            rotation=20,
            clutter=1.3,
            clutter_concepts=concept_weights(),
            noise=(0.0, 0.03),
        ),
    ),
    SetDecl(
        "dtd",
        "close-ups where a surface texture fills the frame (Describable Textures-like)",
        "top1",
        "texture",
        tuple((R.TEXTURE_ADJECTIVES[t], {"texture": t}) for t in T),
        Distribution(
            _only([c.name for c in R.CONCEPTS], {"ball": 3, "bottle": 1, "cup": 1, "leaf": 1, "house": 1, "heart": 1}),
            {},
            _w(C),
            _only(B, ("plain", "indoor", "gradient", "foliage")),
            {"photo": 0.8, "closeup": 0.2},
            scale=(1.4, 2.2),
            jitter=0.2,
            rotation=180,
            clutter=0.0,
            noise=(0.0, 0.02),
        ),
    ),
    SetDecl(
        "caltech101",
        "centred objects on clean backgrounds (Caltech-101-like)",
        "top1",
        "concept",
        _classes_by(
            "concept",
            (
                "star",
                "cross",
                "heart",
                "moon",
                "key",
                "bell",
                "umbrella",
                "cup",
                "owl",
                "fish",
                "leaf",
                "flower",
                "house",
                "boat",
                "arrow",
                "diamond",
            ),
        ),
        Distribution(
            {},
            _w(T, plain=3),
            _w(C),
            _only(B, {"studio": 3, "plain": 2, "gradient": 1}),
            {"photo": 0.85, "clipart": 0.15},
            scale=(0.55, 0.8),
            jitter=0.05,
            rotation=8,
            clutter=0.0,
            noise=(0.0, 0.01),
        ),
    ),
    SetDecl(
        "pets",
        "fine-grained pets: which animal and which coat colour (Oxford-IIIT Pets-like)",
        "top1",
        "concept x colour",
        tuple(
            (f"{col} {animal}", {"concept": animal, "colour": col})
            for animal, cols in (
                ("cat", ("black", "orange", "gray", "white")),
                ("dog", ("brown", "black", "white", "yellow")),
                ("rabbit", ("white", "brown")),
                ("mouse", ("gray", "white")),
            )
            for col in cols
        ),
        Distribution(
            {},
            _only(T, {"plain": 3, "stripes": 1, "spots": 1.5, "dots": 0.5}),
            {},
            _only(B, {"indoor": 3, "grass": 2, "studio": 1, "plain": 1}),
            {"photo": 1.0},
            scale=(0.45, 0.75),
            jitter=0.2,
            rotation=15,
            clutter=0.3,
            clutter_concepts=concept_weights(animal=0),
            noise=(0.0, 0.02),
        ),
    ),
    SetDecl(
        "domainnet_real",
        "DomainNet 'real' domain: photographs of 15 concepts",
        "top1",
        "concept",
        _classes_by("concept", _DN_CLASSES),
        Distribution(
            {},
            _w(T),
            _w(C),
            _only(B, ("sky", "grass", "indoor", "water", "studio", "gradient", "foliage")),
            {"photo": 1.0},
            scale=(0.4, 0.8),
            jitter=0.25,
            rotation=20,
            clutter=0.6,
            noise=(0.0, 0.02),
        ),
    ),
    SetDecl(
        "domainnet_clipart",
        "DomainNet 'clipart' domain: the same 15 concepts as clipart",
        "top1",
        "concept",
        _classes_by("concept", _DN_CLASSES),
        Distribution(
            {},
            _w(T, plain=3),
            _w(C),
            _only(B, ("plain", "studio", "gradient")),
            {"clipart": 1.0},
            scale=(0.45, 0.85),
            jitter=0.15,
            rotation=20,
            clutter=0.2,
            noise=(0.0, 0.0),
        ),
    ),
    SetDecl(
        "eurosat",
        "top-down land cover: the texture and colour of the ground (EuroSAT-like)",
        "top1",
        "texture x colour",
        (
            ("annual_crop", {"texture": "stripes", "colour": "yellow"}),
            ("forest", {"texture": "spots", "colour": "green"}),
            ("herbaceous_vegetation", {"texture": "marble", "colour": "green"}),
            ("highway", {"texture": "stripes", "colour": "gray"}),
            ("industrial", {"texture": "grid", "colour": "gray"}),
            ("pasture", {"texture": "plain", "colour": "green"}),
            ("permanent_crop", {"texture": "dots", "colour": "green"}),
            ("residential", {"texture": "checks", "colour": "brown"}),
            ("river", {"texture": "waves", "colour": "blue"}),
            ("sea_lake", {"texture": "plain", "colour": "blue"}),
        ),
        Distribution(
            _only([c.name for c in R.CONCEPTS], ("ball", "diamond", "leaf", "house", "heart")),
            {},
            {},
            _only(B, ("fields", "grass", "sand", "water")),
            {"satellite": 1.0},
            scale=(1.3, 2.0),
            jitter=0.3,
            rotation=180,
            clutter=0.0,
            noise=(0.0, 0.02),
        ),
    ),
    SetDecl(
        "cameratraps",
        "camera-trap frames: small animals in dark, noisy, cluttered scenes; imbalanced",
        "balanced_acc",
        "concept",
        _classes_by("concept", ("deer", "rabbit", "mouse", "bird", "bear", "owl", "dog", "snake")),
        Distribution(
            {},
            _w(T, plain=3),
            _w(C, brown=3, gray=3, black=2, white=1),
            _only(B, {"night": 3, "foliage": 2, "grass": 2}),
            {"infrared": 0.7, "photo": 0.3},
            scale=(0.22, 0.45),
            jitter=0.45,
            rotation=15,
            clutter=1.2,
            clutter_concepts=_only([c.name for c in R.CONCEPTS], ("leaf", "tree", "flower", "mushroom")),
            noise=(0.02, 0.07),
        ),
        class_weights=(0.3, 0.18, 0.14, 0.1, 0.09, 0.07, 0.07, 0.05),
    ),
    SetDecl(
        "cassava",
        "cassava leaf close-ups: the disease is the spot pattern on the leaf (Cassava-like)",
        "top1",
        "texture",
        (
            ("healthy", {"texture": "plain"}),
            ("bacterial_blight", {"texture": "spots"}),
            ("brown_streak", {"texture": "stripes"}),
            ("green_mottle", {"texture": "dots"}),
            ("mosaic", {"texture": "marble"}),
        ),
        Distribution(
            {"leaf": 1.0},
            {},
            {"green": 4, "yellow": 1},
            _only(B, {"foliage": 3, "grass": 1}),
            {"closeup": 0.9, "photo": 0.1},
            scale=(0.8, 1.1),
            jitter=0.1,
            rotation=60,
            clutter=0.3,
            clutter_concepts={"leaf": 1.0},
            noise=(0.0, 0.02),
        ),
    ),
)

PACKAGE_SETS = {
    "digits": "scikit-learn's 8x8 handwritten digits (UCI), upscaled to 32x32 RGB",
    "textures": "tiles of scikit-image's sample photographs (brick, grass, gravel, ...), one class per photograph; "
    "splits come from disjoint regions of each photograph",
}

SOURCES_BY_NAME = {d.name: d for d in SOURCE_DECLS}
SETS_BY_NAME = {d.name: d for d in SET_DECLS}
WORLD_SETS: tuple[str, ...] = tuple(SETS_BY_NAME)  # the nine world sets' names, in the catalogue's order


def _check_vocabulary() -> None:
    """Caption words other than concept names must never be concept names (labels come from captions)."""
    concepts = set(R.CONCEPT_NAMES)
    words: set[str] = set()
    for phrases in list(HYPERNYMS.values()) + list(STYLE_PHRASES.values()):
        for p in phrases:
            words.update(p.split())
    words.update(SCENE_WORDS.values())
    words.update(R.TEXTURE_ADJECTIVES.values())
    words.update(R.COLOUR_NAMES)
    for d in SOURCE_DECLS:
        words.update(d.caption.filler)
    clash = sorted(words & concepts)
    if clash:
        raise RuntimeError(f"caption words {clash} are also concept names; captions would mislabel samples")
    foreign: set[str] = set()
    for lang, v in FOREIGN_VOCAB.items():
        if set(v["colour"]) != set(C) or set(v["scene"]) != set(B):
            raise RuntimeError(f"FOREIGN_VOCAB[{lang!r}] must translate every colour and background")
        for phrase in (*v["opener"], *v["noun"], *v["colour"].values(), *v["scene"].values(), *v["filler"]):
            foreign.update(phrase.replace("-", " ").split())
    clash = sorted(foreign & concepts)
    if clash:
        raise RuntimeError(f"foreign caption words {clash} are English concept names; they would yield labels")


_check_vocabulary()


def probabilities(weights: dict[str, float], vocab: list[str] | tuple[str, ...], what: str) -> np.ndarray:
    """``weights`` (a name -> weight mapping) as probabilities over ``vocab``; ``what`` names the field in errors."""
    p = np.array([float(weights.get(v, 0.0)) for v in vocab])
    unknown = set(weights) - set(vocab)
    if unknown:
        raise ValueError(f"{what}: unknown value(s) {sorted(unknown)}; valid: {', '.join(vocab)}")
    if p.sum() <= 0:
        raise ValueError(f"{what}: weights must have positive total mass")
    return p / p.sum()
