#!/usr/bin/env python3
"""SpeechBrain's IEMOCAP emotion-recognition recipe, shape for shape, with serkit heads as its
``embedding_model`` and ``classifier`` lobes (docs/speechbrain_reuse.md).

The data are a serkit fold (``serkit prepare`` + ``serkit split``): its ``train.json``, ``valid.json``
and ``test.json`` are SpeechBrain's JSON format (``wav``, ``emo`` per utterance id), so they load as they
are and preparation is skipped (``--skip_prep True``)::

    python train.py hparams/train.yaml --fold_dir data/IEMOCAP/folds/fold1 --skip_prep True
"""
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml


class EmoIdBrain(sb.Brain):
    def compute_forward(self, batch, stage):
        """Waveforms -> Fbank -> embedding (B, 1, D) -> log-probabilities (B, 1, K)."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        feats = self.modules.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, lens)
        embeddings = self.modules.embedding_model(feats, lens)
        return self.modules.classifier(embeddings)

    def compute_objectives(self, predictions, batch, stage):
        emoid, _ = batch.emo_encoded
        loss = sb.nnet.losses.nll_loss(predictions, emoid)
        if stage != sb.Stage.TRAIN:
            self.error_metrics.append(batch.id, predictions, emoid)
        return loss

    def on_stage_start(self, stage, epoch=None):
        self.loss_metric = sb.utils.metric_stats.MetricStats(metric=sb.nnet.losses.nll_loss)
        if stage != sb.Stage.TRAIN:
            self.error_metrics = self.hparams.error_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {"loss": stage_loss, "error_rate": self.error_metrics.summarize("average")}
        self.stage_stats = stats
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats({"epoch": epoch}, train_stats={"loss": self.train_loss},
                                                valid_stats=stats)
            self.checkpointer.save_and_keep_only(meta=stats, min_keys=["error_rate"])
        else:
            self.hparams.train_logger.log_stats({"Epoch loaded": self.hparams.epoch_counter.current},
                                                test_stats=stats)


def dataio_prep(hparams):
    """The fold's JSONs as SpeechBrain datasets: ``sig`` (the waveform) and ``emo_encoded`` (B, 1)."""

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("emo")
    @sb.utils.data_pipeline.provides("emo", "emo_encoded")
    def label_pipeline(emo):
        yield emo
        yield label_encoder.encode_label_torch(emo)

    datasets = {}
    for split in ("train", "valid", "test"):
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_json(
            json_path=hparams[f"{split}_annotation"], dynamic_items=[audio_pipeline, label_pipeline],
            output_keys=["id", "sig", "emo_encoded"])
    label_encoder.load_or_create(path=f"{hparams['save_folder']}/label_encoder.txt",
                                 from_didatasets=[datasets["train"]], output_key="emo")
    return datasets, label_encoder


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if not hparams["skip_prep"]:
        sys.exit("this recipe reads a serkit fold: run `serkit prepare` and `serkit split`, then pass "
                 "--fold_dir FOLD --skip_prep True")
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=overrides)
    datasets, label_encoder = dataio_prep(hparams)
    brain = EmoIdBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                       run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.label_encoder = label_encoder
    brain.fit(epoch_counter=brain.hparams.epoch_counter, train_set=datasets["train"],
              valid_set=datasets["valid"], train_loader_kwargs=hparams["dataloader_options"],
              valid_loader_kwargs=hparams["dataloader_options"])
    brain.evaluate(test_set=datasets["test"], min_key="error_rate",
                   test_loader_kwargs=hparams["dataloader_options"])
    return brain, datasets


if __name__ == "__main__":
    main(sys.argv[1:])
