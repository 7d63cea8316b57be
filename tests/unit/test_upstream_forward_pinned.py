"""The fairseq upstream forward gives the numbers it gave before its three copies became one.

Feature extraction (``serkit dump-features``' ``Upstream.extract`` and the batched forward), the
SpeechBrain finetuning lobe (teacher finetuning, FLEA: masking, output dropout, gradients) and the
fairseq ``serkit_ser_model`` (time/channel masking, CNN gradient scaling, one layer, the output with
its final layer norm, the weighted layer sum) on the tiny HuBERT and release stand-ins. ``PINNED``
holds the values those code paths computed before they were merged into ``layer_outputs``
(``python tests/unit/test_upstream_forward_pinned.py`` prints them again).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

pytestmark = pytest.mark.fairseq

LENGTHS = (8000, 5200)


def _summary(t) -> list[float]:
    """Sum, sum of squares and four fixed entries of ``t``: enough to see any changed value."""
    t = t.detach().double().flatten()
    idx = [0, t.numel() // 3, (2 * t.numel()) // 3, t.numel() - 1]
    return [float(t.sum()), float((t * t).sum())] + [float(t[i]) for i in idx]


def _grads(module, prefixes) -> dict[str, list[float]]:
    out = {}
    for prefix in prefixes:
        gs = [p.grad for n, p in module.named_parameters() if n.startswith(prefix) and p.grad is not None]
        total = sum(float(g.double().sum()) for g in gs)
        sq = sum(float((g.double() ** 2).sum()) for g in gs)
        out[prefix] = [len(gs), total, sq]
    return out


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(2, max(LENGTHS), generator=g) * 0.3
    mask = torch.arange(wav.size(1))[None, :] >= torch.tensor(LENGTHS)[:, None]
    return wav.masked_fill(mask, 0.0), mask


def _checkpoints(root: Path) -> dict[str, Path]:
    from serkit.upstream.standins import make_standin
    from serkit.upstream.tiny import make_hubert_checkpoint

    return {
        "tiny": make_hubert_checkpoint(root / "tiny.pt", seed=1),
        "tiny_norm": make_hubert_checkpoint(root / "tiny_norm.pt", seed=2, normalize=True),
        "w2v_large": make_standin("libri960_big.pt", root / "w2v").path,
        "d2v": make_standin("audio_base_ls.pt", root / "d2v").path,
    }


def _extraction(ckpts) -> dict:
    from serkit.upstream import load_upstream

    out = {}
    wav, mask = _batch()
    for name, path in ckpts.items():
        up = load_upstream(path)
        hidden, frame_mask = up(wav, mask, layers=None)
        out[f"extract/{name}/batch"] = [_summary(h) for h in hidden] + [[float(frame_mask.sum())]]
        one = up.extract(wav[1, : LENGTHS[1]], layers=[0, up.num_layers])
        out[f"extract/{name}/one"] = _summary(one)
        chunked = up.extract(wav[0], layers=[1], max_chunk_seconds=0.2)
        out[f"extract/{name}/chunked"] = _summary(chunked)
    return out


def _lobe(ckpts) -> dict:
    from serkit.speechbrain.lobes import FairseqUpstream

    out = {}
    wav, _ = _batch(1)
    lens = torch.tensor([1.0, LENGTHS[1] / LENGTHS[0]])
    cases = {
        "flea": ("tiny", dict(layers="last", mask_time_prob=0.5, mask_time_length=4, output_dropout=0.1)),
        "teacher_all": ("tiny_norm", dict(layers="all", freeze_cnn=False)),
        "frozen": ("d2v", dict(layers="all", freeze=True)),
        "w2v_large": ("w2v_large", dict(layers=[0, 2], mask_time_prob=0.3, mask_time_length=3)),
    }
    for case, (name, kw) in cases.items():
        torch.manual_seed(0)
        lobe = FairseqUpstream(str(ckpts[name]), **kw).train()
        torch.manual_seed(5)
        layers, rel = lobe(wav, lens)
        out[f"lobe/{case}/train"] = _summary(layers) + rel.tolist()
        if layers.requires_grad:
            (layers * torch.linspace(-1, 1, layers.size(-1))).sum().backward()
            out[f"lobe/{case}/grads"] = _grads(
                lobe.model, ("feature_extractor.", "encoder.", "layer_norm", "post_extract_proj", "mask_emb")
            )
        lobe.eval()
        with torch.no_grad():
            layers, rel = lobe(wav, lens)
        out[f"lobe/{case}/eval"] = _summary(layers) + rel.tolist()
    return out


def _ser_model(path: Path, **kw):
    from omegaconf import OmegaConf

    from serkit.fairseq_ext.ser_model import SerModel, SerModelConfig

    class Task:
        num_classes = 4

    cfg = OmegaConf.structured(SerModelConfig(upstream_path=str(path), **kw))
    return SerModel.build_model(cfg, Task())


def _fairseq_model(ckpts) -> dict:
    import numpy as np

    out = {}
    wav, mask = _batch(2)
    cases = {
        "flea": ("tiny", dict(mask_prob=0.5, mask_length=4, mask_channel_prob=0.3, mask_channel_length=8)),
        "cnn_grad": ("tiny_norm", dict(feature_grad_mult=0.1, head="ffn", pooling="mean")),
        "layer1": ("tiny", dict(layer=1, head="transformer", pooling="mean")),
        "layer0": ("tiny", dict(layer=0)),
        "wls": ("tiny", dict(weighted_layer_sum=True, mask_prob=0.3, mask_length=3)),
        "w2v_large": ("w2v_large", dict(mask_prob=0.3, mask_length=3, feature_grad_mult=1.0)),
        "w2v_large_layer2": ("w2v_large", dict(layer=2)),
        "d2v": ("d2v", dict(head="shiftcnn", pooling="mean")),
        "frozen": ("tiny", dict(freeze_upstream=True, weighted_layer_sum=True)),
    }
    for case, (name, kw) in cases.items():
        torch.manual_seed(0)
        model = _ser_model(ckpts[name], **kw)
        model.train()
        torch.manual_seed(3)
        np.random.seed(3)
        res = model(wav, mask)
        out[f"ser/{case}/train"] = _summary(res["logits"]) + [float(res["padding_mask"].sum())]
        (res["logits"] * torch.tensor([1.0, -0.5, 0.25, 2.0])).sum().backward()
        out[f"ser/{case}/grads"] = _grads(
            model,
            (
                "upstream.feature_extractor.",
                "upstream.encoder.",
                "upstream.layer_norm",
                "upstream.post_extract_proj",
                "upstream.mask_emb",
                "head.",
                "layer_sum.",
            ),
        )
        model.eval()
        with torch.no_grad():
            res = model(wav, mask)
            alone = model(wav[1:, : LENGTHS[1]], None)
        out[f"ser/{case}/eval"] = _summary(res["logits"])
        out[f"ser/{case}/alone"] = _summary(alone["logits"])
    return out


def compute() -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ckpts = _checkpoints(Path(tmp))
            return {**_extraction(ckpts), **_lobe(ckpts), **_fairseq_model(ckpts)}
    finally:
        torch.set_num_threads(before)


#: recorded from the three forwards before they became ``layer_outputs`` (commit 5727ea8), except
#: ``ser/d2v/*``: serkit_ser_model now runs data2vec's transformer per utterance in a padded batch, as
#: extraction and the lobe always did (test_ser_model_on_data2vec_gives_the_same_logits_padded_or_alone);
#: before, the padded utterance's logits differed from its logits alone. The old values were:
#:     {'ser/d2v/eval': [-0.3523765504360199, 1.7053023642506804, 0.2831991910934448, -0.7456191182136536,
#:                       0.17370940744876862, 0.3821384310722351],
#:      'ser/d2v/grads': {'head.': [20, 20.06805987335118, 803.5309464211562],
#:                        'layer_sum.': [0, 0, 0],
#:                        'upstream.encoder.': [44, 25.963269764271594, 1098.6339005249274],
#:                        'upstream.feature_extractor.': [0, 0, 0],
#:                        'upstream.layer_norm': [2, 1.5040247614961118, 7.022067516935323],
#:                        'upstream.mask_emb': [0, 0, 0],
#:                        'upstream.post_extract_proj': [2, 0.8920480551696528, 223.75862573382446]},
#:      'ser/d2v/train': [-0.3256864845752716, 1.5144464055711309, 0.2840953469276428, -0.7016648054122925,
#:                        0.21756723523139954, 0.3019333779811859, 8.0]}
PINNED: dict = {
    "extract/d2v/batch": [
        [
            14.774761322885752,
            863.4945879786303,
            -0.8777202367782593,
            0.48434337973594666,
            0.804611325263977,
            0.0,
        ],
        [
            -11.133831513056066,
            2458.179285496313,
            -1.1411206722259521,
            0.2430271953344345,
            1.3054771423339844,
            0.0,
        ],
        [
            -21.056960257483297,
            2619.945052822827,
            -0.9649336338043213,
            0.28542831540107727,
            1.5881116390228271,
            0.0,
        ],
        [8.0],
    ],
    "extract/d2v/chunked": [
        -8.44606332560943,
        1474.3341244975504,
        -0.981271505355835,
        0.7803099155426025,
        0.7297033071517944,
        -0.3367019593715668,
    ],
    "extract/d2v/one": [
        -12.724061295506544,
        1398.2640191216767,
        -0.30888649821281433,
        -0.44080257415771484,
        1.035352110862732,
        0.3039990961551666,
    ],
    "extract/tiny/batch": [
        [
            93.67476282641292,
            797.2657075378539,
            0.779174268245697,
            0.4242531657218933,
            0.13776490092277527,
            0.0,
        ],
        [
            1.6532547306269407e-05,
            2559.974314823168,
            1.0668810606002808,
            0.8578507900238037,
            0.36822184920310974,
            0.0,
        ],
        [
            1.3828248484060168e-05,
            2559.974409271659,
            1.068598747253418,
            0.8493360877037048,
            0.365668386220932,
            0.0,
        ],
        [8.0],
    ],
    "extract/tiny/chunked": [
        3.828899934887886e-06,
        1535.9846550642396,
        1.036429762840271,
        -0.01107475534081459,
        0.8116450309753418,
        -0.2309400588274002,
    ],
    "extract/tiny/one": [
        29.822136856848374,
        1358.3401433339782,
        0.45834729075431824,
        0.6552608013153076,
        0.049040231853723526,
        1.002869963645935,
    ],
    "extract/tiny_norm/batch": [
        [
            96.72383038699627,
            841.2840322916417,
            0.8908063173294067,
            0.027657032012939453,
            -0.5166220664978027,
            0.0,
        ],
        [
            -5.855923518538475e-06,
            2559.974482097648,
            1.5434775352478027,
            -0.02120318077504635,
            -0.9474273324012756,
            0.0,
        ],
        [
            -6.6780776251107454e-06,
            2559.9744977770783,
            1.5292311906814575,
            -0.015918612480163574,
            -0.9161280989646912,
            0.0,
        ],
        [8.0],
    ],
    "extract/tiny_norm/chunked": [
        1.1820229701697826e-06,
        1535.9846789140456,
        1.6058019399642944,
        -1.2264188528060913,
        -0.07560818642377853,
        -0.6077375411987305,
    ],
    "extract/tiny_norm/one": [
        47.32091779989423,
        1376.7944474713577,
        0.21224771440029144,
        -0.17962604761123657,
        0.6310136318206787,
        0.8152524828910828,
    ],
    "extract/w2v_large/batch": [
        [
            112.95107892109081,
            1184.873431816768,
            0.6316289901733398,
            -1.2027243375778198,
            0.4792860150337219,
            0.0,
        ],
        [
            -0.5560076251276769,
            2583.2200947807396,
            1.3921570777893066,
            -1.6508697271347046,
            0.7443121671676636,
            0.0,
        ],
        [
            9.694275632413337,
            2485.8635746965456,
            1.1225707530975342,
            -1.7338640689849854,
            0.513483464717865,
            0.0,
        ],
        [8.0],
    ],
    "extract/w2v_large/chunked": [
        -0.0010682668071240187,
        1545.6502417699564,
        1.2198545932769775,
        0.14751634001731873,
        -1.8432780504226685,
        0.7676235437393188,
    ],
    "extract/w2v_large/one": [
        51.31431310577318,
        1484.590713181651,
        0.21347129344940186,
        -0.26294398307800293,
        -1.2356969118118286,
        -0.3282831311225891,
    ],
    "lobe/flea/eval": [
        1.5660072676837444e-05,
        2559.9743889330043,
        -0.7389316558837891,
        -0.4206629693508148,
        1.1851691007614136,
        0.0,
        1.0,
        0.6666666865348816,
    ],
    "lobe/flea/grads": {
        "encoder.": [37, -11277.787563259693, 587640.2805394952],
        "feature_extractor.": [0, 0, 0],
        "layer_norm": [2, 25.937753178179264, 14716.223868993899],
        "mask_emb": [1, -5.754366606473923, 26274.64008106998],
        "post_extract_proj": [2, -2.277118177851662, 596712.5057620552],
    },
    "lobe/flea/train": [
        -27.907072611589683,
        2850.339152824893,
        -0.906593382358551,
        -0.43878239393234253,
        1.5562477111816406,
        0.0,
        1.0,
        0.6666666865348816,
    ],
    "lobe/frozen/eval": [
        -18.784534010250354,
        5933.445892131465,
        0.6798207759857178,
        1.3926085233688354,
        -0.5780425071716309,
        0.0,
        1.0,
        0.6666666865348816,
    ],
    "lobe/frozen/train": [
        -18.784534010250354,
        5933.445892131465,
        0.6798207759857178,
        1.3926085233688354,
        -0.5780425071716309,
        0.0,
        1.0,
        0.6666666865348816,
    ],
    "lobe/teacher_all/eval": [
        123.89812771446304,
        5978.375426483652,
        0.3696974515914917,
        0.6138832569122314,
        -0.41973406076431274,
        0.0,
        1.0,
        0.6666666865348816,
    ],
    "lobe/teacher_all/grads": {
        "encoder.": [37, 13030.373919313457, 2066774.8394815007],
        "feature_extractor.": [9, 3495.2816781401634, 15110300.65650374],
        "layer_norm": [2, 281.0364547967911, 319606.5193603727],
        "mask_emb": [0, 0, 0],
        "post_extract_proj": [2, 68.13933552056551, 9994181.072141547],
    },
    "lobe/teacher_all/train": [
        123.89812620464363,
        5978.375477778036,
        0.3696974515914917,
        0.6171349287033081,
        -0.4656868278980255,
        0.0,
        1.0,
        0.6666666865348816,
    ],
    "lobe/w2v_large/eval": [
        43.52457737014629,
        3619.4716787908833,
        -0.11203452944755554,
        0.3640679121017456,
        0.0,
        0.0,
        1.0,
        0.6666666865348816,
    ],
    "lobe/w2v_large/grads": {
        "encoder.": [37, 158.3334114519571, 1024264.8505888752],
        "feature_extractor.": [0, 0, 0],
        "layer_norm": [2, -13.980266190133989, 33444.25633902711],
        "mask_emb": [1, -4.577059179544449, 77443.61109941671],
        "post_extract_proj": [2, -19.996654513292015, 923826.3872270789],
    },
    "lobe/w2v_large/train": [
        381.6794327504176,
        3527.3224989227247,
        -0.12448281794786453,
        0.39676934480667114,
        0.0,
        0.0,
        1.0,
        0.6666666865348816,
    ],
    "ser/cnn_grad/alone": [
        -0.024847500026226044,
        0.015974476837581936,
        -0.005897637456655502,
        0.0951307862997055,
        -0.07087200880050659,
        -0.043208640068769455,
    ],
    "ser/cnn_grad/eval": [
        0.0024739261716604233,
        0.03082537943436502,
        -0.010572155937552452,
        -0.05844618380069733,
        0.0951307937502861,
        -0.043208636343479156,
    ],
    "ser/cnn_grad/grads": {
        "head.": [6, 83.01413795127388, 172.75997097390842],
        "layer_sum.": [0, 0, 0],
        "upstream.encoder.": [37, 2.976607758485552, 1.738554130478245],
        "upstream.feature_extractor.": [9, 0.8782195190335642, 0.036018892806218325],
        "upstream.layer_norm": [2, 0.19584559882059693, 0.08155663581437905],
        "upstream.mask_emb": [0, 0, 0],
        "upstream.post_extract_proj": [2, 0.028837111096436274, 3.5489360850115186],
    },
    "ser/cnn_grad/train": [
        0.0006723348051309586,
        0.031025499663230042,
        -0.009714685380458832,
        -0.056962333619594574,
        0.09941050410270691,
        -0.03652256727218628,
        8.0,
    ],
    "ser/d2v/alone": [
        -0.4633103907108307,
        0.6947836253827484,
        0.274023175239563,
        0.10915327072143555,
        -0.776450514793396,
        -0.07003632187843323,
    ],
    "ser/d2v/eval": [
        -0.8049222677946091,
        1.3735867543182547,
        0.2831991910934448,
        -0.7456191182136536,
        0.10915330052375793,
        -0.07003632187843323,
    ],
    "ser/d2v/grads": {
        "head.": [20, 20.1595711375947, 810.2793738893218],
        "layer_sum.": [0, 0, 0],
        "upstream.encoder.": [44, -55.19869161982524, 976.4367193350495],
        "upstream.feature_extractor.": [0, 0, 0],
        "upstream.layer_norm": [2, 1.6914262948557734, 7.201394852232072],
        "upstream.mask_emb": [0, 0, 0],
        "upstream.post_extract_proj": [2, 0.7598974949578405, 236.47119704527572],
    },
    "ser/d2v/train": [
        -0.9688162282109261,
        1.3108193891753435,
        0.28932082653045654,
        -0.7082383632659912,
        0.12135522812604904,
        -0.12443026900291443,
        8.0,
    ],
    "ser/flea/alone": [
        0.2737445682287216,
        0.8632098653677212,
        -0.08278146386146545,
        -0.5476000905036926,
        0.18024583160877228,
        0.7238802909851074,
    ],
    "ser/flea/eval": [
        0.49490267038345337,
        1.5804153718113443,
        -0.14110858738422394,
        0.13317278027534485,
        -0.5476000308990479,
        0.7238802909851074,
    ],
    "ser/flea/grads": {
        "head.": [3, 5.500001915730536, 389.41042146079786],
        "layer_sum.": [0, 0, 0],
        "upstream.encoder.": [37, -25.402690650143448, 141.29387456906014],
        "upstream.feature_extractor.": [0, 0, 0],
        "upstream.layer_norm": [2, 0.22467786184279248, 3.4040233532481237],
        "upstream.mask_emb": [1, 0.5062266401946545, 6.449417239889225],
        "upstream.post_extract_proj": [2, -0.6974617399755516, 84.9674192451331],
    },
    "ser/flea/train": [
        -0.47088634967803955,
        0.5639283494508818,
        -0.20272381603717804,
        -0.3845282793045044,
        0.4033263325691223,
        0.03193342685699463,
        8.0,
    ],
    "ser/frozen/alone": [
        0.2032967135310173,
        0.6002648322092603,
        -0.07543203979730606,
        -0.46810710430145264,
        0.1536809504032135,
        0.5931549072265625,
    ],
    "ser/frozen/eval": [
        0.35268018394708633,
        1.082822246875671,
        -0.13008615374565125,
        0.11264170706272125,
        -0.4681071639060974,
        0.5931549072265625,
    ],
    "ser/frozen/grads": {
        "head.": [3, 9.070214613340795, 378.00420402559047],
        "layer_sum.": [1, -1.564621925354004e-07, 0.10551363261400898],
        "upstream.encoder.": [0, 0, 0],
        "upstream.feature_extractor.": [0, 0, 0],
        "upstream.layer_norm": [0, 0, 0],
        "upstream.mask_emb": [0, 0, 0],
        "upstream.post_extract_proj": [0, 0, 0],
    },
    "ser/frozen/train": [
        0.21980072557926178,
        0.949488618052577,
        -0.15958653390407562,
        0.1363835632801056,
        -0.44374918937683105,
        0.5636658668518066,
        8.0,
    ],
    "ser/layer0/alone": [
        0.06787806004285812,
        0.2513770893478445,
        -0.06290316581726074,
        -0.32974177598953247,
        0.1024923250079155,
        0.35803067684173584,
    ],
    "ser/layer0/eval": [
        0.08525045961141586,
        0.4379212305986547,
        -0.10883919894695282,
        0.07308757305145264,
        -0.32974177598953247,
        0.35803064703941345,
    ],
    "ser/layer0/grads": {
        "head.": [3, 15.44460759870708, 184.08881441580954],
        "layer_sum.": [0, 0, 0],
        "upstream.encoder.": [0, 0, 0],
        "upstream.feature_extractor.": [0, 0, 0],
        "upstream.layer_norm": [2, 1.8328695525415242, 7.360626765023503],
        "upstream.mask_emb": [0, 0, 0],
        "upstream.post_extract_proj": [2, 1.2815218243922573, 113.53450325735247],
    },
    "ser/layer0/train": [
        0.08525045961141586,
        0.4379212305986547,
        -0.10883919894695282,
        0.07308757305145264,
        -0.32974177598953247,
        0.35803064703941345,
        8.0,
    ],
    "ser/layer1/alone": [
        -0.5700456351041794,
        0.35968916398146633,
        -0.15180020034313202,
        -0.3789840340614319,
        -0.32966798543930054,
        0.29040658473968506,
    ],
    "ser/layer1/eval": [
        -1.3546600192785263,
        0.8969894354742023,
        -0.47308143973350525,
        -0.20706044137477875,
        -0.37898391485214233,
        0.29040658473968506,
    ],
    "ser/layer1/grads": {
        "head.": [24, 4.413723517086879, 1298.2562514685942],
        "layer_sum.": [0, 0, 0],
        "upstream.encoder.": [21, 3.2546698196193393, 105.07860184806748],
        "upstream.feature_extractor.": [0, 0, 0],
        "upstream.layer_norm": [2, 0.0030778490472584963, 13.854319674631348],
        "upstream.mask_emb": [0, 0, 0],
        "upstream.post_extract_proj": [2, 0.07451549808683922, 300.78715670555226],
    },
    "ser/layer1/train": [
        -1.2292838543653488,
        0.6736257633529148,
        -0.47837069630622864,
        -0.16875198483467102,
        -0.3373030424118042,
        0.16320368647575378,
        8.0,
    ],
    "ser/w2v_large/alone": [
        0.7105556130409241,
        0.610123237658899,
        0.02935856580734253,
        -0.15770922601222992,
        0.7604129910469055,
        0.07849328219890594,
    ],
    "ser/w2v_large/eval": [
        1.2804856076836586,
        0.9231281389299411,
        -0.07677553594112396,
        0.5469348430633545,
        -0.15770919620990753,
        0.07849326729774475,
    ],
    "ser/w2v_large/grads": {
        "head.": [3, 6.060976495966315, 308.1586083889131],
        "layer_sum.": [0, 0, 0],
        "upstream.encoder.": [37, -3.336973986674735, 177.59822190203064],
        "upstream.feature_extractor.": [9, 91.274619761738, 90.0118258058173],
        "upstream.layer_norm": [2, 0.6651239211205393, 1.6654392670216631],
        "upstream.mask_emb": [1, 0.1806216649711132, 6.529452341394338],
        "upstream.post_extract_proj": [2, 0.04909018920989183, 63.34807837449141],
    },
    "ser/w2v_large/train": [
        1.944400206208229,
        0.8605718856626206,
        0.07103440165519714,
        0.5851951837539673,
        0.22614078223705292,
        0.0788271576166153,
        8.0,
    ],
    "ser/w2v_large_layer2/alone": [
        0.7105556130409241,
        0.610123237658899,
        0.02935856580734253,
        -0.15770922601222992,
        0.7604129910469055,
        0.07849328219890594,
    ],
    "ser/w2v_large_layer2/eval": [
        1.2804856076836586,
        0.9231281389299411,
        -0.07677553594112396,
        0.5469348430633545,
        -0.15770919620990753,
        0.07849326729774475,
    ],
    "ser/w2v_large_layer2/grads": {
        "head.": [3, 6.822158040944487, 441.3808243311161],
        "layer_sum.": [0, 0, 0],
        "upstream.encoder.": [37, -0.21088476777916387, 221.3389696290454],
        "upstream.feature_extractor.": [0, 0, 0],
        "upstream.layer_norm": [2, 0.8673743468243629, 3.3379109344648157],
        "upstream.mask_emb": [0, 0, 0],
        "upstream.post_extract_proj": [2, -0.10816892031834868, 126.09897993060594],
    },
    "ser/w2v_large_layer2/train": [
        1.057857409119606,
        0.827748223853477,
        -0.08444224298000336,
        0.5836626291275024,
        -0.19187138974666595,
        0.038699373602867126,
        8.0,
    ],
    "ser/wls/alone": [
        0.2032967135310173,
        0.6002648322092603,
        -0.07543203979730606,
        -0.46810710430145264,
        0.1536809504032135,
        0.5931549072265625,
    ],
    "ser/wls/eval": [
        0.3526802137494087,
        1.082822181912851,
        -0.13008615374565125,
        0.11264170706272125,
        -0.46810710430145264,
        0.5931549072265625,
    ],
    "ser/wls/grads": {
        "head.": [3, 20.026952236890793, 303.82666248318327],
        "layer_sum.": [1, -1.1920928955078125e-07, 0.04485822751147006],
        "upstream.encoder.": [37, -3.534109818703911, 57.30809560216257],
        "upstream.feature_extractor.": [0, 0, 0],
        "upstream.layer_norm": [2, 0.7624752183910459, 6.061745883289536],
        "upstream.mask_emb": [1, 0.01642523519694805, 4.703494024323091],
        "upstream.post_extract_proj": [2, -0.009025052437209524, 121.14019154692708],
    },
    "ser/wls/train": [
        0.07477622479200363,
        0.8407856062614738,
        -0.23574018478393555,
        0.15265274047851562,
        -0.28117722272872925,
        0.4119299650192261,
        8.0,
    ],
}


@pytest.fixture(scope="module")
def computed():
    return compute()


def _close(a, b) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.parametrize("part", ["extract/", "lobe/", "ser/"])
def test_forward_numbers_are_the_pinned_ones(computed, part):
    keys = sorted(k for k in PINNED if k.startswith(part))
    assert keys and keys == sorted(k for k in computed if k.startswith(part))
    changed = [k for k in keys if not _close(computed[k], PINNED[k])]
    assert not changed, {k: (computed[k], PINNED[k]) for k in changed}


if __name__ == "__main__":
    import pprint

    sys.stdout.write("PINNED = ")
    pprint.pprint(compute(), width=110, compact=True)


def test_ser_model_on_data2vec_gives_the_same_logits_padded_or_alone(tmp_path):
    """data2vec's stacked positional convolution carries padding into valid frames unless run alone."""
    from serkit.upstream.standins import make_standin

    torch.manual_seed(0)
    ckpt = make_standin("audio_base_ls.pt", tmp_path).path
    model = _ser_model(ckpt, head="shiftcnn", pooling="mean").eval()
    wav, mask = _batch(2)
    with torch.no_grad():
        padded = model(wav, mask)["logits"]
        alone = model(wav[1:, : LENGTHS[1]], None)["logits"]
    assert torch.allclose(padded[1], alone[0], atol=1e-5), (padded[1], alone[0])
