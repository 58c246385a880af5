/// Figures as PNG files, drawn headless with ScottPlot (Plotly's own image export needs a browser).
module MechInterp.Analysis.Report.PngRender

open System
open System.IO
open ScottPlot
open SkiaSharp

let private color (hex: string) = ScottPlot.Color.FromHex hex

/// ScottPlot has no log axis: log panels plot log10 of the data and label ticks with the original values.
let private toAxis isLog (values: float[]) =
    if isLog then values |> Array.map (fun v -> if v > 0.0 then log10 v else nan) else values

let private logTicks () =
    let ticks = TickGenerators.NumericAutomatic()
    ticks.LabelFormatter <- Func<float, string>(fun v -> sprintf "%g" (Math.Round(10.0 ** v, 4)))
    ticks

let private addSeries (plot: Plot) (panel: Panel) (series: Series) =
    let xs = toAxis panel.XLog
    let ys = toAxis panel.YLog
    match series with
    | Points(name, px, py, c, colors) ->
        match colors with
        | Some cs ->
            // One plottable per point: ScottPlot colours a scatter as a whole.
            Array.iteri (fun i c ->
                let s = plot.Add.ScatterPoints([| (xs px).[i] |], [| (ys py).[i] |], color c)
                s.MarkerSize <- 9.0f) cs
        | None ->
            let s = plot.Add.ScatterPoints(xs px, ys py, color c)
            s.MarkerSize <- 9.0f
            s.LegendText <- name
    | Line(name, px, py, c, markers) ->
        let s = plot.Add.Scatter(xs px, ys py, color c)
        s.LineWidth <- 2.0f
        s.MarkerSize <- (if markers then 6.0f else 0.0f)
        s.LegendText <- name
    | Bars(_, px, heights, colors) ->
        let bars =
            Array.init px.Length (fun i ->
                Bar(Position = (xs px).[i], Value = heights.[i], FillColor = color colors.[i], LineWidth = 0.0f))
        plot.Add.Bars(bars) |> ignore
    | Heatmap(z, zMin, zMax) ->
        let h = plot.Add.Heatmap(Array2D.copy z)
        h.Colormap <- Colormaps.Balance()
        h.ManualRange <- Nullable(ScottPlot.Range(zMin, zMax))
        // ScottPlot draws row 0 at the top but numbers the y axis upwards: relabel so ticks name rows.
        let lastRow = float (Array2D.length1 z - 1)
        let ticks = TickGenerators.NumericAutomatic()
        ticks.LabelFormatter <-
            Func<float, string>(fun v ->
                let row = Math.Round(lastRow - v, 3)
                if row < 0.0 || row > lastRow then "" else sprintf "%g" row)
        plot.Axes.Left.TickGenerator <- ticks
    | HLine(y, label) ->
        let y = if panel.YLog then log10 y else y
        let l = plot.Add.HorizontalLine(y, 1.0f, Nullable(color "#888888"), LinePattern.Dashed)
        l.LegendText <- label
        l.Text <- label
        l.LabelFontSize <- 10.0f

/// One panel as a ScottPlot plot.
let panelPlot (panel: Panel) : Plot =
    let plot = new Plot()
    panel.Series |> List.iter (addSeries plot panel)
    plot.Title(panel.Title, Nullable 13.0f)
    plot.XLabel(panel.XLabel, Nullable 12.0f)
    plot.YLabel(panel.YLabel, Nullable 12.0f)
    if panel.XLog then plot.Axes.Bottom.TickGenerator <- logTicks ()
    if panel.YLog then plot.Axes.Left.TickGenerator <- logTicks ()
    if panel.EqualAspect then plot.Axes.SquareUnits()
    // ScottPlot shows a legend whenever a series has a label; only the panels that ask for one get it.
    if panel.ShowLegend then plot.ShowLegend(Alignment.UpperRight) |> ignore else plot.HideLegend() |> ignore
    plot

/// Renders the figure's panels on a grid under its title and writes a PNG (written to a temp file, then renamed).
let write (path: string) (figure: Figure) =
    let panels = figure.Panels
    if panels.IsEmpty then invalidArg (nameof figure) $"figure '{figure.Id}' has no panels"
    let cols = min figure.Columns panels.Length
    let rows = (panels.Length + cols - 1) / cols
    let titleBand = 36
    let width, height = cols * figure.PanelWidth, rows * figure.PanelHeight + titleBand
    use surface = SKSurface.Create(SKImageInfo(width, height))
    let canvas = surface.Canvas
    canvas.Clear SKColors.White
    use typeface = SKTypeface.FromFamilyName "DejaVu Sans"
    use font = new SKFont(typeface, 18.0f)
    use paint = new SKPaint(Color = SKColors.Black, IsAntialias = true)
    canvas.DrawText(figure.Title, 10.0f, 25.0f, SKTextAlign.Left, font, paint)
    panels
    |> List.iteri (fun i panel ->
        use plot = panelPlot panel
        let bytes = plot.GetImageBytes(figure.PanelWidth, figure.PanelHeight, ImageFormat.Png)
        use bitmap = SKBitmap.Decode(bytes: byte[])
        let x = (i % cols) * figure.PanelWidth
        let y = titleBand + (i / cols) * figure.PanelHeight
        canvas.DrawBitmap(bitmap, float32 x, float32 y))
    use image = surface.Snapshot()
    use data = image.Encode(SKEncodedImageFormat.Png, 100)
    MechInterp.IO.AtomicFile.Write(path, fun file -> data.SaveTo file)
