"""Figures of quantization reports (matplotlib, imported on use)."""
from .report_figure import check_report, figure_size, plot_report

__all__ = ['check_report', 'figure_size', 'plot_report']
