"""A brute-force path-patching reference, written independently of the engine and of hooks.

It runs a GPT-2 straight from the Hugging Face weights and assembles every receiver's input
explicitly as a sum of sender writes, each taken from the run the edge rule picks (clean, corrupt,
or the current run). Slow and simple on purpose: loops over receivers and senders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACT = {"relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class Gpt2Reference:
    def __init__(self, hf_model):
        self.hf = hf_model
        self.cfg = hf_model.config
        self.H = self.cfg.n_head
        self.d = self.cfg.n_embd
        self.dh = self.d // self.H
        self.L = self.cfg.n_layer
        self.act = ACT[self.cfg.activation_function]

    def senders(self):
        out = ["embed"]
        for layer in range(self.L):
            out += [f"L{layer}H{h}" for h in range(self.H)] + [f"MLP{layer}"]
        return out

    def readable(self, receiver_layer: int, kind: str):
        """Senders a receiver reads: a head in layer l reads layers < l; an MLP also layer l's heads."""
        out = ["embed"]
        for layer in range(self.L):
            if layer < receiver_layer or kind == "logits":
                out += [f"L{layer}H{h}" for h in range(self.H)] + [f"MLP{layer}"]
            elif layer == receiver_layer and kind == "mlp":
                out += [f"L{layer}H{h}" for h in range(self.H)]
        return out

    @torch.no_grad()
    def run(self, tokens, choose=None, sources=None):
        """Logits and every sender's write. ``choose(receiver, sender)`` gives None (current) or
        (source name, [batch, pos] bool mask or None) for each edge; ``sources[name][sender]`` are writes."""
        tr = self.hf.transformer
        b, p = tokens.shape
        writes = {"embed": tr.wte(tokens) + tr.wpe(torch.arange(p))}
        biases = []  # attention output biases already in the stream (no sender owns them)

        def assemble(receiver, kind, layer):
            total = sum(biases) if biases else 0
            for sender in self.readable(layer, kind):
                value = writes[sender]
                pick = choose(receiver, sender) if choose else None
                if pick is not None:
                    name, mask = pick
                    source = sources[name][sender]
                    value = source if mask is None else torch.where(mask[..., None], source, value)
                total = total + value
            return total

        causal = torch.tril(torch.ones(p, p, dtype=torch.bool))
        for layer in range(self.L):
            block = tr.h[layer]
            W = block.attn.c_attn.weight  # [d, 3d]: q, k, v columns
            bias = block.attn.c_attn.bias
            W_O, b_O = block.attn.c_proj.weight, block.attn.c_proj.bias
            for h in range(self.H):
                cols = slice(h * self.dh, (h + 1) * self.dh)
                qkv = []
                for i, name in enumerate("qkv"):
                    x = block.ln_1(assemble(f"L{layer}H{h}.{name}", "head", layer))
                    qkv.append(x @ W[:, i * self.d :][:, cols] + bias[i * self.d :][cols])
                q, k, v = qkv
                scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh)
                scores = scores.masked_fill(~causal, float("-inf"))
                z = scores.softmax(-1) @ v
                writes[f"L{layer}H{h}"] = z @ W_O[cols, :]
            biases.append(b_O)
            fc, proj = block.mlp.c_fc, block.mlp.c_proj
            neurons = fc.weight.shape[1]
            pre = torch.empty(b, p, neurons)
            whole = block.ln_2(assemble(f"MLP{layer}", "mlp", layer))
            for n in range(neurons):
                own = f"L{layer}N{n}"
                if choose is not None and any(choose(own, s) is not None for s in self.readable(layer, "mlp")):
                    x = block.ln_2(assemble(own, "mlp", layer))
                else:
                    x = whole
                pre[..., n] = x @ fc.weight[:, n] + fc.bias[n]
            writes[f"MLP{layer}"] = self.act(pre) @ proj.weight + proj.bias
        final = tr.ln_f(assemble("logits", "logits", self.L))
        return self.hf.lm_head(final), writes

    def patched(self, kind, edges, clean, corrupt, positions=None):
        """Logits under the DESIGN rule for ``kind`` over ``edges``: a set of (receiver, sender) names;
        ``positions`` maps an edge to a [batch, pos] mask restricting it."""
        _, clean_writes = self.run(clean)
        _, corrupt_writes = self.run(corrupt)
        sources = {"clean": clean_writes, "corrupt": corrupt_writes}
        positions = positions or {}

        def choose(receiver, sender):
            edge = (receiver, sender)
            if receiver.startswith("L") and "N" in receiver:  # a neuron: also reached by edges into its MLP
                layer = receiver[1 : receiver.index("N")]
                inside = edge in edges or (f"MLP{layer}", sender) in edges
                mask = positions.get(edge, positions.get((f"MLP{layer}", sender)))
            else:
                inside, mask = edge in edges, positions.get(edge)
            if kind == "denoise":
                return ("clean", mask) if inside else None
            if kind == "noise":
                return ("corrupt", mask) if inside else None
            if not inside:
                return ("corrupt", None)
            return ("corrupt", ~mask) if mask is not None else None  # circuit-only: outside positions too

        base = corrupt if kind == "denoise" else clean
        logits, _ = self.run(base, choose, sources)
        return logits
