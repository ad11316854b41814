"""Tiny real diffusers pipelines, written to folders as the Hub holds them: PixArtSigmaPipeline
(T5 + DPM-Solver) and FluxPipeline (CLIP + T5 + flow-matching Euler), with tokenizers made here
(no downloads): a SentencePiece model trained on a few sentences for T5 (its 40 pieces: different
prompts are different ids), a character vocabulary for CLIP. Only the transformer is what the tests look at; text encoders and VAEs are the smallest
the classes allow."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import tiny_flux, tiny_pixart

SENTENCES = ["a photo of a cat", "a red car on a street", "a handwritten digit seven",
             "an astronaut riding a horse", "the quick brown fox jumps over the lazy dog"]
T5_DIM = 12  # = the tiny transformers' caption_channels / joint_attention_dim
CLIP_DIM = 10  # = the tiny Flux's pooled_projection_dim
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"

# a recipe that calibrates in these pipelines ({teacher}: a folder or hub id; {size}: SIZE[family])
SIZE = {"pixart": "", "flux": "height: 32, width: 32, "}  # Flux's default is 1024²
RECIPE = """\
model: {family}
teacher: {teacher}
stream: {stream}
calibration: {{source: pipeline, prompts: [a photo of a cat, a red car, a horse, a fox, a dog],
              sample_steps: 3, timesteps: 2, {size}batch_size: 4, heldout: 4}}
passes:
  - svd: {{targets: [attention, mlp], fisher: block, ratio: 0.5, multiple: 2, progress: false}}
"""


def _t5(folder: Path):
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=40,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    tokenizer = _t5_tokenizer(T5Tokenizer, folder / "spiece.model")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=T5_DIM, d_ff=16, d_kv=4, num_layers=1, num_heads=2)
    return tokenizer, T5EncoderModel(config).eval()


def _t5_tokenizer(cls, model: Path):
    """A T5 tokenizer of `cls` (T5Tokenizer / T5TokenizerFast) with the SentencePiece model `model`'s
    vocabulary. transformers 5's T5Tokenizer is a Unigram table that ignores vocab_file (it kept 4
    tokens, every word one unknown id): it is given the model's pieces and scores instead."""
    import inspect

    import sentencepiece as spm

    if "vocab" not in inspect.signature(cls.__init__).parameters:  # transformers 4: reads the file
        return cls(vocab_file=str(model), extra_ids=0, **({"legacy": False} if cls.__name__ == "T5Tokenizer" else {}))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    return cls(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], extra_ids=0)


def _clip(folder: Path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {c: i for i, c in enumerate(LETTERS)}
    vocab.update({c + "</w>": len(LETTERS) + i for i, c in enumerate(LETTERS)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=77)
    torch.manual_seed(1)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=CLIP_DIM, intermediate_size=16,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=CLIP_DIM, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    return tokenizer, CLIPTextModel(config).eval()


def _vae(latent_channels: int, **config):
    """`config`: more of AutoencoderKL's (Flux's shift_factor, which its pipeline's decoding reads)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4,) * 4,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=2,
                         sample_size=32)  # 4 blocks: 8x downsampling, as the real VAEs


def pixart_pipeline(folder: Path) -> Path:
    """A PixArtSigmaPipeline folder. The transformer's sample size is 32 (one the pipeline's
    resolution binning knows: 256² images, 32² latents, 16² tokens at patch size 2)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline

    tokenizer, text_encoder = _t5(folder.parent)
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae(4),
                               transformer=tiny_pixart(sample_size=32, patch_size=2),
                               scheduler=DPMSolverMultistepScheduler())
    pipe.save_pretrained(folder)
    return folder


def flux_pipeline(folder: Path, **transformer) -> Path:
    """A FluxPipeline folder (its default is 1024² images: calibrate it at a small height/width);
    `transformer`: overrides of the tiny FluxTransformer2DModel's config (guidance_embeds=False: as
    FLUX.1-schnell)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import T5TokenizerFast

    clip_tokenizer, clip = _clip(folder.parent)
    t5_tokenizer, t5 = _t5(folder.parent)
    fast = _t5_tokenizer(T5TokenizerFast, folder.parent / "spiece.model")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)  # FLUX.1-dev's
    pipe = FluxPipeline(scheduler=scheduler, vae=_vae(2, shift_factor=0.1159), text_encoder=clip,  # FLUX.1's
                        tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=fast,
                        transformer=tiny_flux(**transformer))  # in_channels 8: 2 latent channels, packed 2x2
    pipe.save_pretrained(folder)
    return folder


def hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """`folder` as the Hugging Face cache holds a downloaded snapshot of `repo_id` (refs/main and
    snapshots/<commit>/), so hub ids resolve with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache."""
    import shutil

    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return cache


def pipeline_folders(root: Path) -> dict[str, Path]:
    """family -> a tiny pipeline folder under `root` (pixart/pipe, flux/pipe)."""
    (root / "pixart").mkdir(), (root / "flux").mkdir()
    return {"pixart": pixart_pipeline(root / "pixart" / "pipe"),
            "flux": flux_pipeline(root / "flux" / "pipe")}
