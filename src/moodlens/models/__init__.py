"""The shipped models (expression-{4,7}.tflite with their cards, BlazeFace) and what is true of all of them.

The texts below go into every model card `moodlens export` writes, and the web app shows them for a model that
ships without a card.
"""

INTENDED_USE = (
    "Reading the facial expression (the configuration of the face) of people in ordinary photos and webcam "
    "frames, for demos, research, user-studies with consent, and aggregate analysis of photo collections."
)
LIMITATIONS = [
    "It reads facial expressions, not feelings: a smile is not happiness, a frown is not anger. Do not use it "
    "to infer anyone's emotional state, mental health, honesty, or intent, or to make decisions about people "
    "(hiring, policing, education, credit, insurance).",
    "Trained on FER2013: 48x48 grayscale web images, mostly posed or exaggerated expressions, with noisy labels "
    "(FER+ relabelled the same images; the two label sets often disagree). Expressions in the wild are subtler.",
    "FER2013's demographics are undocumented and skewed (mostly adult, light-skinned faces from image search); "
    "accuracy for children, older people, darker skin tones and non-Western expression norms is not measured "
    "and is likely lower.",
    "48x48 grayscale input: colour and fine detail are lost; glasses, masks, hands, profile views, strong "
    "lighting and motion blur lower accuracy. Faces smaller than about 24 pixels are not reliably detected.",
    "PublicTest is the validation split the model was selected on, so its figures are optimistic; 279 "
    "PublicTest images also appear in Training (see the de-duplicated figures).",
    "The 4-class model forces every face into angry, happy, neutral or sad; surprise, fear and disgust faces "
    "get one of those four. Use the `uncertain` flag.",
]
DATA_TERMS = {
    "FER2013": "Kaggle ICML 2013 'Challenges in Representation Learning' dataset (Carrier & Courville). No "
               "license is stated; research data. Cite Goodfellow et al., 2013 (arXiv:1307.0414). No image "
               "from it is shipped with moodlens.",
    "FER+": "Microsoft FER+ crowd labels (fer2013new.csv), MIT License, Copyright (c) Microsoft Corporation. "
            "Cite Barsoum et al., ICMI 2016 (arXiv:1608.01041).",
}
