/// What an experiment hands to the report: values only. The renderers (Plotly for the page, ScottPlot
/// for PNGs) turn the same description into both, so no experiment touches HTML or a plotting library.
namespace MechInterp.Analysis.Report

/// A colour as "#rrggbb".
type Color = string

/// One thing drawn in a panel. Coordinates are data values; log axes are the panel's business.
type Series =
    /// Markers at (x, y); one colour per point when `Colors` is given, else `Color`.
    | Points of name: string * xs: float[] * ys: float[] * color: Color * colors: Color[] option
    /// A polyline through (x, y), with markers at its vertices when `markers`.
    | Line of name: string * xs: float[] * ys: float[] * color: Color * markers: bool
    /// Vertical bars at positions xs with heights ys, one colour per bar.
    | Bars of name: string * xs: float[] * heights: float[] * colors: Color[]
    /// A matrix shown row 0 at the top, coloured on a blue–white–red scale over [zMin, zMax].
    | Heatmap of z: float[,] * zMin: float * zMax: float
    /// A dashed horizontal reference line with a label.
    | HLine of y: float * label: string

/// One set of axes.
type Panel =
    { Title: string
      XLabel: string
      YLabel: string
      XLog: bool
      YLog: bool
      /// One data unit is the same length on both axes (geometry in the plane).
      EqualAspect: bool
      ShowLegend: bool
      Series: Series list }

/// A figure: panels on a grid of `Columns` columns, a caption, and a file-name-safe id (its PNG is `<section>-<id>.png`).
type Figure =
    { Id: string
      Title: string
      Caption: string
      Columns: int
      /// Pixel size of one panel in the PNG.
      PanelWidth: int
      PanelHeight: int
      Panels: Panel list }

/// A plain table of already-formatted cells.
type Table =
    { Title: string
      Header: string list
      Rows: string list list }

/// A headline number with its unit or context, e.g. ("ReLU features represented at 1 − S = 0.001", "11 of 20").
type KeyNumber = { Label: string; Value: string }

/// One section of the report, as an experiment returns it.
type ReportSection =
    { Id: string
      Title: string
      Paragraphs: string list
      KeyNumbers: KeyNumber list
      Figures: Figure list
      Tables: Table list }

/// Constructors with defaults, so a caller writes only what differs.
module Panel =
    let empty title =
        { Title = title; XLabel = ""; YLabel = ""; XLog = false; YLog = false
          EqualAspect = false; ShowLegend = false; Series = [] }

module Figure =
    let create id title caption columns panels =
        { Id = id; Title = title; Caption = caption; Columns = max 1 columns
          PanelWidth = 320; PanelHeight = 280; Panels = panels }

module ReportSection =
    let create id title =
        { Id = id; Title = title; Paragraphs = []; KeyNumbers = []; Figures = []; Tables = [] }
