/// Figures as interactive Plotly.NET charts for the HTML page.
module MechInterp.Analysis.Report.PlotlyRender

open System
open Plotly.NET
open Plotly.NET.LayoutObjects

/// Blue (negative) – white – red (positive), the paper's colouring of WᵀW.
let private diverging =
    StyleParam.Colorscale.Custom [ 0.0, Color.fromHex "#2166ac"; 0.5, Color.fromHex "#f7f7f7"; 1.0, Color.fromHex "#b2182b" ]

/// The x extent of a panel's data, for reference lines that span it.
let private xExtent (panel: Panel) =
    let xs =
        panel.Series
        |> List.collect (function
            | Points(_, xs, _, _, _) | Line(_, xs, _, _, _) | Bars(_, xs, _, _) -> List.ofArray xs
            | Heatmap(z, _, _) -> [ -0.5; float (Array2D.length2 z) - 0.5 ]
            | HLine _ -> [])
    if xs.IsEmpty then 0.0, 1.0 else List.min xs, List.max xs

let private trace (panel: Panel) (series: Series) : GenericChart =
    let legend = panel.ShowLegend
    match series with
    | Points(name, xs, ys, color, colors) ->
        let markerColor =
            match colors with
            | Some cs -> Color.fromColors (cs |> Array.map Color.fromHex)
            | None -> Color.fromHex color
        Chart.Point(x = xs, y = ys, Name = name, ShowLegend = legend, MarkerColor = markerColor)
    | Line(name, xs, ys, color, markers) ->
        Chart.Line(x = xs, y = ys, Name = name, ShowLegend = legend, ShowMarkers = markers, LineColor = Color.fromHex color)
    | Bars(name, xs, heights, colors) ->
        Chart.Column(values = heights, Keys = xs, Name = name, ShowLegend = legend,
                     MarkerColor = Color.fromColors (colors |> Array.map Color.fromHex))
    | Heatmap(z, zMin, zMax) ->
        let rows = [ for r in 0 .. Array2D.length1 z - 1 -> [ for c in 0 .. Array2D.length2 z - 1 -> z.[r, c] ] ]
        Chart.Heatmap(zData = rows, ColorScale = diverging, ReverseYAxis = true, ShowScale = false)
        |> GenericChart.mapTrace (fun t ->
            t.SetProperty("zmin", zMin)
            t.SetProperty("zmax", zMax)
            t)
    | HLine(y, label) ->
        let x0, x1 = xExtent panel
        Chart.Line(x = [ x0; x1 ], y = [ y; y ], Name = label, ShowLegend = legend,
                   LineColor = Color.fromHex "#888888", LineDash = StyleParam.DrawingStyle.Dash)

let private axisType isLog = if isLog then StyleParam.AxisType.Log else StyleParam.AxisType.Linear

/// Symmetric limits shared by both axes, so directions in the plane keep their angles.
let private squareRange (panel: Panel) =
    let extent =
        panel.Series
        |> List.collect (function
            | Points(_, xs, ys, _, _) | Line(_, xs, ys, _, _) -> List.ofArray (Array.append xs ys)
            | _ -> [])
        |> List.map abs
        |> List.fold max 1e-9
    let r = extent * 1.15
    (-r, r)

/// One panel as one chart.
let panelChart (panel: Panel) : GenericChart =
    let chart = panel.Series |> List.map (trace panel) |> Chart.combine
    let chart =
        if panel.EqualAspect then
            let range = squareRange panel
            chart
            |> Chart.withXAxisStyle (TitleText = panel.XLabel, MinMax = range)
            |> Chart.withYAxisStyle (TitleText = panel.YLabel, MinMax = range)
        else
            chart
            |> Chart.withXAxisStyle (TitleText = panel.XLabel, AxisType = axisType panel.XLog)
            |> Chart.withYAxisStyle (TitleText = panel.YLabel, AxisType = axisType panel.YLog)
    chart |> Chart.withTitle panel.Title

/// A whole figure: its panels on a grid, sized like its PNG.
let figureChart (figure: MechInterp.Analysis.Report.Figure) : GenericChart =
    let panels = figure.Panels
    if panels.IsEmpty then invalidArg (nameof figure) $"figure '{figure.Id}' has no panels"
    let cols = min figure.Columns panels.Length
    let rows = (panels.Length + cols - 1) / cols
    let charts = panels |> List.map panelChart
    let width = cols * figure.PanelWidth
    let height = rows * figure.PanelHeight + 60
    let chart =
        if panels.Length = 1 then charts.Head
        else
            let padding = List.replicate (rows * cols - panels.Length) (Chart.Invisible())
            Chart.Grid(nRows = rows, nCols = cols, SubPlotTitles = (panels |> List.map (fun p -> p.Title)),
                       XGap = 0.25, YGap = 0.35) (charts @ padding)
    chart
    |> Chart.withTitle figure.Title
    |> Chart.withSize (width, height)
    |> Chart.withLayoutStyle (ShowLegend = (panels |> List.exists (fun p -> p.ShowLegend)))

/// The figure's div and drawing script; the page must load plotly.js once before it (see Html).
let figureHtml (figure: MechInterp.Analysis.Report.Figure) : string = figureChart figure |> GenericChart.toChartHTML

/// plotly.js as Plotly.NET ships it, to inline once per page so the report opens with no network.
let plotlyJs () : string =
    let assembly = typeof<GenericChart>.Assembly
    let name =
        assembly.GetManifestResourceNames()
        |> Array.tryFind (fun n -> n.StartsWith "Plotly.NET.plotly-" && n.EndsWith ".min.js")
        |> Option.defaultWith (fun () -> failwith "Plotly.NET carries no embedded plotly.js resource; cannot build an offline report")
    use stream =
        match assembly.GetManifestResourceStream name with
        | null -> failwith $"Plotly.NET lists the resource {name} but cannot open it"
        | s -> s
    use reader = new IO.StreamReader(stream)
    reader.ReadToEnd()
