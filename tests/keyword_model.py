"""A model with keyword inputs, like a transformers classifier (for the CLI test)."""

import torch


class KeywordNet(torch.nn.Module):
    """Logits from token ids and an attention mask: ``model(input_ids=..., attention_mask=...)``."""

    def __init__(self, vocab=20, dim=8, n_classes=3):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, n_classes)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(self.head.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return {"logits": self.head(pooled)}
