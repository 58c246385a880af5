/// The report page: sections in order, plotly.js inlined once in the head so it opens offline.
module MechInterp.Analysis.Report.Html

open System
open System.Net
open System.Text

let private esc (s: string) = WebUtility.HtmlEncode s

let private style =
    """body{font-family:system-ui,sans-serif;max-width:1500px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:2.2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:1em 0;font-size:0.92em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}.keys td:first-child{text-align:left}.figure{margin:1.5em 0;overflow-x:auto}
.caption{color:#444;font-size:0.95em}nav a{margin-right:1em}"""

let private table (t: Table) =
    let sb = StringBuilder()
    sb.Append($"<h4>{esc t.Title}</h4><table><tr>") |> ignore
    for h in t.Header do sb.Append($"<th>{esc h}</th>") |> ignore
    sb.Append("</tr>") |> ignore
    for row in t.Rows do
        sb.Append("<tr>") |> ignore
        for cell in row do sb.Append($"<td>{esc cell}</td>") |> ignore
        sb.Append("</tr>") |> ignore
    sb.Append("</table>").ToString()

/// `figureHtml` draws a figure (Plotly div + script); `pngName` names its PNG, linked beside it.
let section (figureHtml: Figure -> string) (pngName: ReportSection -> Figure -> string) (s: ReportSection) =
    let sb = StringBuilder()
    sb.Append($"<section id=\"{esc s.Id}\"><h2>{esc s.Title}</h2>\n") |> ignore
    for p in s.Paragraphs do sb.Append($"<p>{esc p}</p>\n") |> ignore
    if not s.KeyNumbers.IsEmpty then
        sb.Append("<table class=\"keys\">") |> ignore
        for k in s.KeyNumbers do sb.Append($"<tr><td>{esc k.Label}</td><td>{esc k.Value}</td></tr>") |> ignore
        sb.Append("</table>\n") |> ignore
    for f in s.Figures do
        sb.Append($"<div class=\"figure\" id=\"{esc s.Id}-{esc f.Id}\">{figureHtml f}") |> ignore
        sb.Append($"<p class=\"caption\">{esc f.Caption} <a href=\"{esc (pngName s f)}\">PNG</a></p></div>\n") |> ignore
    for t in s.Tables do sb.Append(table t).Append('\n') |> ignore
    sb.Append("</section>\n").ToString()

/// The whole page. plotly.js goes in once; a "</script" inside it would end the tag early, so it is escaped.
let page (title: string) (plotlyJs: string) (sectionsHtml: (ReportSection * string) list) =
    let sb = StringBuilder()
    sb.Append($"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc title}</title>\n") |> ignore
    let script = plotlyJs.Replace("</script", "<\\/script")
    sb.Append($"<style>{style}</style>\n<script type=\"text/javascript\">{script}</script>\n") |> ignore
    sb.Append($"</head><body><h1>{esc title}</h1>\n") |> ignore
    let generated = DateTime.UtcNow.ToString "yyyy-MM-dd HH:mm"
    sb.Append($"<p>Generated {generated} UTC. Every figure is also a PNG beside this page.</p><nav>") |> ignore
    for s, _ in sectionsHtml do sb.Append($"<a href=\"#{esc s.Id}\">{esc s.Title}</a>") |> ignore
    sb.Append("</nav>\n") |> ignore
    for _, html in sectionsHtml do sb.Append(html) |> ignore
    sb.Append("</body></html>\n").ToString()
