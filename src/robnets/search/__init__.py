"""Robust architecture search (RobNets Sec. 3-4): the weight-sharing supernet, architecture sampling,
fine-tune-and-score ranking sharded over ranks, and the paper's density / convolution-placement / FSP
analyses."""

from .analysis import correlation, rank, summarize
from .fsp import cell_fsp_losses, deep_cell_loss, fsp_matrix
from .runner import Search, SearchResult
from .space import SearchSpace, direct_edges, shard, structure
from .supernet import Supernet, genotype_to_mask, mask_to_genotype, recalibrate_batchnorm

__all__ = ["Search", "SearchResult", "SearchSpace", "Supernet", "cell_fsp_losses", "correlation",
           "deep_cell_loss", "direct_edges", "fsp_matrix", "genotype_to_mask", "mask_to_genotype", "rank",
           "recalibrate_batchnorm", "shard", "structure", "summarize"]
