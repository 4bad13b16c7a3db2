"""A pretrained `transformers` speech encoder (Wav2Vec2, XLS-R, HuBERT; Whisper's encoder below) as a
streaming encoder; `load` picks the class from the folder's model type.

Loaded from a local folder only (`local_files_only`). It takes raw 16 kHz samples, fed as 10 ms
"wave frames" (B, T, 160) so that frames, blocks and lengths mean what they mean for the log-mel
encoder (training/data.py makes them; eval/driver.py streams them). Two modes (`streaming`):

- `full`: the model as `transformers` runs it (full attention, centred positional convolution,
  per-utterance GroupNorm). It cannot stream.
- `block_causal` (wav2vec-S style): every output frame belongs to the block in which its last
  sample arrives; attention sees the frame's own block and earlier ones (keys/values cached), the
  positional convolution keeps its centred weights but reads nothing past the end of the current
  block (later frames are zeros), and a first-layer GroupNorm (base models) normalises with the
  statistics of the samples so far (cumulative) instead of the whole utterance's. `forward` over a
  whole utterance and `forward_block` block by block give the same numbers.

SpecAugment masking and LayerDrop of the `transformers` model are not applied. Whisper computes its
own log-mel from the samples, so it too takes wave frames (see `WhisperSpeechEncoder`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import KV, Adapter, BlockStream, lengths_to_mask

WAVE_RATE = 16000  # the pretrained models' sampling rate
FRAME_SAMPLES = 160  # one 10 ms input frame
MODES = ("block_causal", "full")
MODEL_TYPES = ("wav2vec2", "hubert")


@dataclass
class HFEncoderState:
    conv: list[Tensor]  # per convolution: its input not consumed yet (B, C_in, < kernel)
    norm: tuple[Tensor, Tensor, int] | None  # cumulative GroupNorm: sum, sum of squares (B, C), count
    pos: Tensor  # the last `pad` projected frames (B, pad, D): left context of the positional conv
    kv: list[KV | None]
    frames: int = 0


class WaveNorm(nn.Module):
    """One global mean/std for every sample (a causal stand-in for the feature extractor's
    per-utterance normalisation). `set_stats` takes the trainer's per-dimension statistics of the
    wave frames and pools them; a model whose extractor does not normalise (`enabled` False, as
    Whisper's) keeps the samples as recorded."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        if not self.enabled:
            return
        pooled = mean.mean()
        self.mean.copy_(pooled)
        self.std.copy_(((std.pow(2) + mean.pow(2)).mean() - pooled.pow(2)).clamp_min(1e-10).sqrt())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class HFSpeechEncoder(BlockStream, nn.Module):
    """Wave frames (B, T, 160) -> (B, T', D) at the model's frame rate (20 ms), offline or block by block."""

    input_kind = "wave"

    def __init__(self, cfg):
        super().__init__()
        from transformers import AutoModel

        if cfg.streaming not in MODES:
            raise ValueError(f"encoder.streaming must be one of {', '.join(MODES)}, got {cfg.streaming!r}")
        self.cfg, self.causal = cfg, cfg.streaming == "block_causal"
        self.hf = AutoModel.from_pretrained(cfg.path, local_files_only=True)
        c = self.hf.config
        if c.model_type not in MODEL_TYPES:
            raise ValueError(f"encoder.path {cfg.path}: a {c.model_type!r} model; the waveform encoder takes "
                             f"{', '.join(MODEL_TYPES)}")
        if getattr(c, "add_adapter", False) or getattr(c, "adapter_attn_dim", None):
            raise ValueError(f"encoder.path {cfg.path}: models with adapters are not supported")
        if cfg.left_blocks is not None:
            raise ValueError("encoder.left_blocks: the hf encoder keeps every past block (null)")
        self.stride = math.prod(c.conv_stride)
        self.receptive = 1
        for k, s in zip(reversed(c.conv_kernel), reversed(c.conv_stride), strict=True):
            self.receptive = (self.receptive - 1) * s + k
        self.block_samples = cfg.block_frames * FRAME_SAMPLES
        if self.block_samples % self.stride or self.block_samples < self.receptive:
            raise ValueError(f"encoder.block_ms {cfg.block_frames * 10}: must be a multiple of "
                             f"{self.stride * 1000 // WAVE_RATE} ms and at least {self.receptive * 1000 / WAVE_RATE} ms")
        self.stable = bool(c.do_stable_layer_norm)
        self.group_norm = c.feat_extract_norm == "group"
        self.norm = WaveNorm(_normalises(cfg.path))
        pos = self.hf.encoder.pos_conv_embed
        self.pos_kernel = pos.conv.kernel_size[0]
        self.pos_pad = self.pos_kernel // 2  # HF pads k//2 both sides, then drops the last frame if k is even
        self.adapters = _adapters(cfg, c.hidden_size, len(self.hf.encoder.layers))

    @property
    def d_model(self) -> int:
        return self.hf.config.hidden_size

    # -- frame arithmetic --------------------------------------------------------------------------
    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames for `lengths` wave frames: those whose receptive field is complete."""
        n = lengths * FRAME_SAMPLES
        return torch.where(n >= self.receptive, torch.div(n - self.receptive, self.stride, rounding_mode="floor") + 1, 0)

    def frames_after(self, blocks: int) -> int:
        """Output frames complete once `blocks` whole blocks have been read."""
        n = blocks * self.block_samples
        return 0 if n < self.receptive else (n - self.receptive) // self.stride + 1

    def block_ids(self, frames: int, device=None) -> Tensor:
        """(T',) the block in which each output frame's last sample arrives."""
        t = torch.arange(frames, device=device)
        return torch.div(t * self.stride + self.receptive - 1, self.block_samples, rounding_mode="floor")

    # -- parts -----------------------------------------------------------------------------------
    def _wave(self, feats: Tensor) -> Tensor:
        if feats.shape[-1] != FRAME_SAMPLES:
            raise ValueError(f"the hf encoder takes {WAVE_RATE} Hz mono wave frames of {FRAME_SAMPLES} samples; got "
                             f"width {feats.shape[-1]} (log-mel features, another rate or several channels?)")
        return self.norm(feats.reshape(feats.shape[0], -1))

    def _norm_act(self, i: int, layer: nn.Module, y: Tensor, stats):
        """A conv layer's normalisation and activation; the first GroupNorm is cumulative when causal."""
        if i == 0 and self.group_norm and self.causal:
            y, stats = _cumulative_group_norm(y, layer.layer_norm, stats)
        elif isinstance(getattr(layer, "layer_norm", None), nn.LayerNorm):
            y = layer.layer_norm(y.transpose(1, 2)).transpose(1, 2)
        elif hasattr(layer, "layer_norm"):
            y = layer.layer_norm(y)
        return layer.activation(y), stats

    def _convs(self, wave: Tensor, state: HFEncoderState | None) -> tuple[Tensor, list[Tensor], tuple | None]:
        """(B, n) samples -> (B, C, T') conv features; with a state, continues a stream."""
        h, tails, stats = wave[:, None], [], state.norm if state is not None else None
        for i, layer in enumerate(self.hf.feature_extractor.conv_layers):
            conv = layer.conv
            if state is not None:  # only whole windows; the rest waits for the next block
                k, s = conv.kernel_size[0], conv.stride[0]
                h = torch.cat([state.conv[i], h], dim=2)
                n_out = (h.shape[2] - k) // s + 1 if h.shape[2] >= k else 0
                tails.append(h[:, :, n_out * s:])
                h = h[:, :, :(n_out - 1) * s + k] if n_out else h[:, :, :0]
            if h.shape[2] == 0:
                h = h.new_zeros(h.shape[0], conv.out_channels, 0)
                continue
            h, stats = self._norm_act(i, layer, conv(h), stats)
        return h, tails, stats

    def _project(self, h: Tensor) -> Tensor:
        x = self.hf.feature_projection(h.transpose(1, 2))
        return x[0] if isinstance(x, tuple) else x  # wav2vec2 also returns the normed features

    def _pos_input(self, x: Tensor) -> Tensor:
        bn = getattr(self.hf.encoder.pos_conv_embed, "batch_norm", None)  # HuBERT's conv_pos_batch_norm
        return x if bn is None else bn(x.transpose(1, 2)).transpose(1, 2)

    def _pos_block(self, x: Tensor, left: Tensor) -> Tensor:
        """Positional conv of one block (B, L, D) given the `pad` frames before it; nothing after it."""
        pos = self.hf.encoder.pos_conv_embed
        right = x.new_zeros(x.shape[0], self.pos_kernel - 1 - self.pos_pad, x.shape[2])
        h = torch.cat([left, x, right], dim=1).transpose(1, 2)
        h = F.conv1d(h, pos.conv.weight, pos.conv.bias, groups=pos.conv.groups)
        return pos.activation(h).transpose(1, 2)

    def _layers(self, x: Tensor, mask: Tensor | None, caches: list[KV | None]) -> tuple[Tensor, list[KV]]:
        enc = self.hf.encoder
        if not self.stable:
            x = enc.layer_norm(x)
        x = enc.dropout(x)
        kvs = []
        for i, (layer, cache) in enumerate(zip(enc.layers, caches, strict=True)):
            x, kv = _layer(layer, x, mask, cache, self.stable)
            x = self.adapters[i](x) if self.adapters is not None else x
            kvs.append(kv)
        return (enc.layer_norm(x) if self.stable else x), kvs

    # -- offline -----------------------------------------------------------------------------------
    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats: (B, T, 160) wave frames, lengths: (B,) in frames -> (B, T', D), (B,)."""
        wave = self._wave(feats) * lengths_to_mask(lengths * FRAME_SAMPLES, feats.shape[1] * FRAME_SAMPLES)
        if wave.shape[1] < self.receptive:
            wave = F.pad(wave, (0, self.receptive - wave.shape[1]))
        h, _, _ = self._convs(wave, None)
        out_lengths = self.output_lengths(lengths)
        T = h.shape[2]
        valid = lengths_to_mask(out_lengths, T)
        x = self._project(h) * valid[..., None]  # padded frames are zeros, as transformers makes them
        if self.causal:
            ids = self.block_ids(T, x.device)
            xp, pos = self._pos_input(x), torch.zeros_like(x)
            for b in ids.unique().tolist():
                lo, hi = int((ids < b).sum()), int((ids <= b).sum())
                left = F.pad(xp[:, max(0, lo - self.pos_pad):lo], (0, 0, max(0, self.pos_pad - lo), 0))
                pos[:, lo:hi] = self._pos_block(xp[:, lo:hi], left)
            mask = (ids[None, :] <= ids[:, None])[None, None] & valid[:, None, None, :]
            mask = mask | torch.eye(T, dtype=torch.bool, device=x.device)[None, None]  # padding queries see themselves
        else:
            pos = self.hf.encoder.pos_conv_embed(x)
            mask = valid[:, None, None, :]
        x, _ = self._layers(x + pos, mask, [None] * len(self.hf.encoder.layers))
        return x, out_lengths

    # -- streaming ---------------------------------------------------------------------------------
    def init_state(self, batch: int = 1, device=None, dtype=None) -> HFEncoderState:
        if not self.causal:
            raise ValueError("encoder.streaming full cannot stream; use block_causal")
        convs = [layer.conv for layer in self.hf.feature_extractor.conv_layers]
        return HFEncoderState(conv=[torch.zeros(batch, c.in_channels, 0, device=device, dtype=dtype) for c in convs],
                              norm=None,
                              pos=torch.zeros(batch, self.pos_pad, self.d_model, device=device, dtype=dtype),
                              kv=[None] * len(self.hf.encoder.layers))

    def forward_block(self, block_feats: Tensor, state: HFEncoderState) -> tuple[Tensor, HFEncoderState]:
        """One block of wave frames (B, <= block_frames, 160) -> its complete output frames (B, L, D), new state."""
        assert block_feats.shape[1] <= self.cfg.block_frames, "one block at a time"
        h, tails, stats = self._convs(self._wave(block_feats), state)
        x = self._project(h)
        if x.shape[1] == 0:  # e.g. a last block shorter than a stride
            return x, HFEncoderState(tails, stats, state.pos, state.kv, state.frames)
        xp = self._pos_input(x)
        x = x + self._pos_block(xp, state.pos)
        out, kv = self._layers(x, None, state.kv)  # the block sees its cache and itself
        pos = torch.cat([state.pos, xp], dim=1)[:, -self.pos_pad:] if self.pos_pad else state.pos
        return out, HFEncoderState(tails, stats, pos, kv, state.frames + out.shape[1])



def _adapters(cfg, width: int, n_layers: int) -> nn.ModuleList | None:
    """`encoder.adapter_dim` > 0: a bottleneck adapter after each pretrained layer (models/blocks.py), the
    identity until trained, so a stage can fine-tune them alone (SAMU's `st.encoder.*adapter*`)."""
    return nn.ModuleList(Adapter(width, cfg.adapter_dim) for _ in range(n_layers)) if cfg.adapter_dim else None


def _normalises(path: str) -> bool:
    """Does the checkpoint's feature extractor normalise each clip (`do_normalize`; yes when it has none)?"""
    import json
    from pathlib import Path

    config = Path(path) / "preprocessor_config.json"
    return bool(json.loads(config.read_text()).get("do_normalize", True)) if config.is_file() else True


def _cumulative_group_norm(y: Tensor, gn: nn.GroupNorm, stats) -> tuple[Tensor, tuple]:
    """GroupNorm with one group per channel, normalising frame t by the statistics of frames <= t."""
    B, C, T = y.shape
    s0, q0, n0 = stats if stats is not None else (y.new_zeros(B, C, dtype=torch.float64),
                                                  y.new_zeros(B, C, dtype=torch.float64), 0)
    yd = y.double()
    sums = s0[..., None] + yd.cumsum(-1)
    squares = q0[..., None] + (yd * yd).cumsum(-1)
    count = n0 + torch.arange(1, T + 1, device=y.device, dtype=torch.float64)
    mean = sums / count
    var = (squares / count - mean * mean).clamp_min(0)
    out = ((yd - mean) / (var + gn.eps).sqrt()).to(y.dtype) * gn.weight[:, None] + gn.bias[:, None]
    return out, (sums[..., -1], squares[..., -1], n0 + T)


def _layer(layer: nn.Module, x: Tensor, mask: Tensor | None, cache: KV | None, stable: bool) -> tuple[Tensor, KV]:
    """One `transformers` encoder layer (post-norm, or pre-norm when `stable`) with our attention."""
    h = layer.layer_norm(x) if stable else x
    a, kv = _attend(layer.attention, h, mask, cache)
    x = x + layer.dropout(a)
    if stable:
        return x + layer.feed_forward(layer.final_layer_norm(x)), kv
    x = layer.layer_norm(x)
    return layer.final_layer_norm(x + layer.feed_forward(x)), kv


def _attend(attn: nn.Module, x: Tensor, mask: Tensor | None, cache: KV | None) -> tuple[Tensor, KV]:
    """The layer's own projections, with a bool mask and a KV cache."""
    B, T, D = x.shape

    def heads(t: Tensor) -> Tensor:
        return t.view(B, T, attn.num_heads, attn.head_dim).transpose(1, 2)

    q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
    if cache is not None:
        k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling,
                                       dropout_p=attn.dropout if attn.training else 0.0)
    return attn.out_proj(y.transpose(1, 2).reshape(B, T, D)), (k, v)


# -- Whisper ---------------------------------------------------------------------------------------
@dataclass
class WhisperState:
    tails: list[Tensor]  # input not consumed yet: samples (B, n), then conv1's and conv2's (B, C, < 3)
    peak: Tensor  # (B,) the highest log-mel value so far (Whisper's normalisation floor is peak - 8)
    kv: list[KV | None]
    frames: int = 0  # output frames so far: the position of the next one


class WhisperSpeechEncoder(nn.Module):
    """Whisper's encoder on 16 kHz samples, computing Whisper's own log-mel (wave frames (B, T, 160) in).

    `full` is `transformers`' computation: the feature extractor's centred STFT and per-clip peak over
    the clip padded to 30 s, then full attention over all 1500 positions. `block_causal` keeps the
    weights and changes what looks ahead: STFT windows start 200 zeros before the clip (no reflection),
    the log-mel floor follows the running peak, both convolutions are left-padded only (an output waits
    for its last input), and attention is block-causal with a KV cache. Positions stay absolute (at most
    30 s: the learned table's 1500 frames)."""

    input_kind = "wave"
    N_FFT, HOP, RECEPTIVE, STRIDE = 400, 160, 520, 320  # a causal frame t needs samples < 320 t + 520

    def __init__(self, cfg):
        super().__init__()
        from transformers import AutoModel, WhisperFeatureExtractor

        if cfg.streaming not in MODES:
            raise ValueError(f"encoder.streaming must be one of {', '.join(MODES)}, got {cfg.streaming!r}")
        if cfg.left_blocks is not None:
            raise ValueError("encoder.left_blocks: the hf encoder keeps every past block (null)")
        self.cfg, self.causal = cfg, cfg.streaming == "block_causal"
        self.hf = AutoModel.from_pretrained(cfg.path, local_files_only=True).get_encoder()
        c = self.hf.config
        try:  # the checkpoint's own filters; the standard ones for its mel count otherwise
            extractor = WhisperFeatureExtractor.from_pretrained(cfg.path, local_files_only=True)
        except OSError:
            extractor = WhisperFeatureExtractor(feature_size=c.num_mel_bins)
        if (extractor.n_fft, extractor.hop_length, extractor.sampling_rate) != (self.N_FFT, self.HOP, WAVE_RATE):
            raise ValueError(f"encoder.path {cfg.path}: a Whisper feature extractor other than 400/160 at 16 kHz")
        self.register_buffer("filters", torch.from_numpy(extractor.mel_filters).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.N_FFT), persistent=False)
        self.receptive, self.stride = self.RECEPTIVE, self.STRIDE
        self.block_samples = cfg.block_frames * FRAME_SAMPLES
        if self.block_samples % self.stride or self.block_samples < self.receptive:
            raise ValueError(f"encoder.block_ms {cfg.block_frames * 10}: must be a multiple of 20 ms and at least "
                             f"{self.receptive * 1000 / WAVE_RATE} ms")
        self.max_frames = c.max_source_positions
        self.norm = WaveNorm(enabled=False)
        self.adapters = _adapters(cfg, c.d_model, len(self.hf.layers))

    d_model = HFSpeechEncoder.d_model
    frames_after = HFSpeechEncoder.frames_after
    block_ids = HFSpeechEncoder.block_ids

    def output_lengths(self, lengths: Tensor) -> Tensor:
        if self.causal:
            return HFSpeechEncoder.output_lengths(self, lengths)
        return torch.div(lengths + 1, 2, rounding_mode="floor")  # one mel frame per hop, two per output frame

    def _log_mel(self, frames: Tensor) -> Tensor:
        """(B, n_fft, T) windows of samples -> (B, mels, T) log10 mel energies."""
        spec = torch.fft.rfft(frames * self.window[:, None], dim=1).abs().pow(2)
        return (self.filters.T @ spec).clamp_min(1e-10).log10()

    def _full(self, wave: Tensor) -> Tensor:
        """transformers' features of the clip padded to 30 s, and its encoder."""
        n = self.max_frames * 2 * self.HOP
        if wave.shape[1] > n:
            raise ValueError(f"the Whisper encoder takes at most {n / WAVE_RATE:.0f} s")
        wave = F.pad(wave, (0, n - wave.shape[1]))
        padded = F.pad(wave[:, None], (self.N_FFT // 2, self.N_FFT // 2), mode="reflect")[:, 0]
        mel = self._log_mel(padded.unfold(1, self.N_FFT, self.HOP).transpose(1, 2))[..., :-1]
        peak = mel.amax(dim=(1, 2), keepdim=True)
        mel = (torch.maximum(mel, peak - 8.0) + 4.0) / 4.0
        return self.hf(mel).last_hidden_state

    def init_state(self, batch: int = 1, device=None, dtype=None) -> WhisperState:
        if not self.causal:
            raise ValueError("encoder.streaming full cannot stream; use block_causal")
        d = self.hf.config.d_model
        tails = [torch.zeros(batch, self.N_FFT // 2, device=device, dtype=dtype),  # STFT windows start at -200
                 torch.zeros(batch, self.hf.config.num_mel_bins, 1, device=device, dtype=dtype),  # left pads
                 torch.zeros(batch, d, 1, device=device, dtype=dtype)]
        return WhisperState(tails, torch.full((batch,), -torch.inf, device=device), [None] * len(self.hf.layers))

    def _front(self, wave: Tensor, state: WhisperState) -> tuple[Tensor, list[Tensor], Tensor]:
        """Samples -> (B, T', D) conv frames whose inputs are complete; the rest waits in the tails."""
        buf = torch.cat([state.tails[0], wave], dim=1)
        n = (buf.shape[1] - self.N_FFT) // self.HOP + 1 if buf.shape[1] >= self.N_FFT else 0
        tails = [buf[:, n * self.HOP:]]
        mel = self._log_mel(buf[:, :(n - 1) * self.HOP + self.N_FFT].unfold(1, self.N_FFT, self.HOP).transpose(1, 2)
                            if n else buf.new_zeros(buf.shape[0], self.filters.shape[1], 0))
        peak = torch.maximum(state.peak[:, None], mel.amax(dim=1).cummax(dim=1).values) if n else state.peak[:, None]
        h = (torch.maximum(mel, peak[:, None, :] - 8.0) + 4.0) / 4.0
        for i, conv in enumerate((self.hf.conv1, self.hf.conv2), start=1):
            h = torch.cat([state.tails[i], h], dim=2)
            k, s = conv.kernel_size[0], conv.stride[0]
            m = (h.shape[2] - k) // s + 1 if h.shape[2] >= k else 0
            tails.append(h[:, :, m * s:])
            h = F.gelu(F.conv1d(h[:, :, :(m - 1) * s + k], conv.weight, conv.bias, stride=s)) if m else \
                h.new_zeros(h.shape[0], conv.out_channels, 0)
        return h.transpose(1, 2), tails, peak[:, -1]

    def _layers(self, x: Tensor, offset: int, mask: Tensor | None, caches: list[KV | None]):
        if offset + x.shape[1] > self.max_frames:
            raise ValueError(f"the Whisper encoder has {self.max_frames} positions ({self.max_frames / 50:.0f} s)")
        x = x + self.hf.embed_positions.weight[offset:offset + x.shape[1]]
        x = F.dropout(x, self.hf.dropout, self.training)
        kvs = []
        for i, (layer, cache) in enumerate(zip(self.hf.layers, caches, strict=True)):
            a, kv = _attend(layer.self_attn, layer.self_attn_layer_norm(x), mask, cache)
            x = x + F.dropout(a, layer.dropout, self.training)
            h = F.dropout(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))), layer.activation_dropout,
                          self.training)
            x = x + F.dropout(layer.fc2(h), layer.dropout, self.training)
            x = self.adapters[i](x) if self.adapters is not None else x
            kvs.append(kv)
        return self.hf.layer_norm(x), kvs

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats: (B, T, 160) wave frames, lengths: (B,) in frames -> (B, T', D), (B,)."""
        wave = HFSpeechEncoder._wave(self, feats) * lengths_to_mask(lengths * FRAME_SAMPLES,
                                                                    feats.shape[1] * FRAME_SAMPLES)
        out_lengths = self.output_lengths(lengths)
        if not self.causal:
            return self._full(wave)[:, :int(out_lengths.max())], out_lengths
        x, _, _ = self._front(wave, self.init_state(wave.shape[0], wave.device, wave.dtype))
        T = x.shape[1]
        ids = self.block_ids(T, x.device)
        mask = (ids[None, :] <= ids[:, None])[None, None] & lengths_to_mask(out_lengths, T)[:, None, None, :]
        mask = mask | torch.eye(T, dtype=torch.bool, device=x.device)[None, None]  # padding queries see themselves
        x, _ = self._layers(x, 0, mask, [None] * len(self.hf.layers))
        return x, out_lengths

    def forward_block(self, block_feats: Tensor, state: WhisperState) -> tuple[Tensor, WhisperState]:
        """One block of wave frames (B, <= block_frames, 160) -> its complete output frames (B, L, D), new state."""
        assert block_feats.shape[1] <= self.cfg.block_frames, "one block at a time"
        x, tails, peak = self._front(HFSpeechEncoder._wave(self, block_feats), state)
        if x.shape[1] == 0:
            return x, WhisperState(tails, peak, state.kv, state.frames)
        out, kv = self._layers(x, state.frames, None, state.kv)
        return out, WhisperState(tails, peak, kv, state.frames + out.shape[1])

    stream = HFSpeechEncoder.stream


def load(cfg) -> nn.Module:
    """The encoder class for the model type in `cfg.path`."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(cfg.path, local_files_only=True).model_type
    if model_type == "whisper":
        return WhisperSpeechEncoder(cfg)
    if model_type in MODEL_TYPES:
        return HFSpeechEncoder(cfg)
    raise ValueError(f"encoder.path {cfg.path}: a {model_type!r} model; the hf encoder takes "
                     f"{', '.join(MODEL_TYPES + ('whisper',))}")
