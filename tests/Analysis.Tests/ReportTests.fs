/// The report writer: one offline page with plotly.js inlined once, a PNG per figure, JSON results.
module MechInterp.Analysis.Tests.ReportTests

open System
open System.IO
open System.Text.Json
open Xunit
open MechInterp.Analysis.Report

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), $"mechinterp-report-{Guid.NewGuid():N}")
    Directory.CreateDirectory d |> ignore
    d

let private everyKind =
    [ { Panel.empty "heatmap" with Series = [ Heatmap(array2D [ [ 1.0; -0.5 ]; [ -0.5; 1.0 ] ], -1.0, 1.0) ] }
      { Panel.empty "bars and a line" with
          XLog = true; ShowLegend = true
          Series =
            [ Bars("b", [| 1.0; 10.0 |], [| 0.3; 0.9 |], [| "#000000"; "#f2c40c" |])
              Line("l", [| 1.0; 10.0 |], [| 0.2; 0.4 |], "#1f77b4", true)
              HLine(0.5, "half") ] }
      { Panel.empty "points" with
          EqualAspect = true
          Series = [ Points("p", [| -1.0; 1.0 |], [| 0.5; -0.5 |], "#d62728", Some [| "#d62728"; "#1f77b4" |]) ] } ]

[<Fact>]
let ``a report page inlines plotly once and writes a PNG per figure`` () =
    let dir = tempDir ()
    try
        let figures = [ Figure.create "one" "First" "caption <1>" 3 everyKind; Figure.create "two" "Second" "" 1 [ everyKind.Head ] ]
        let a = { ReportSection.create "alpha" "Alpha & co" with Figures = figures; Paragraphs = [ "x < y" ] }
        let b = { ReportSection.create "beta" "Beta" with KeyNumbers = [ { Label = "k"; Value = "42" } ] }
        let page = Report.write dir "Test report" [ a; b ]
        let html = File.ReadAllText page
        let js = PlotlyRender.plotlyJs ()
        Assert.True(js.Length > 1_000_000, $"embedded plotly.js is only {js.Length} characters")
        let marker = js.Substring(0, 200)
        let occurrences = (html.Length - html.Replace(marker, "").Length) / marker.Length
        Assert.Equal(1, occurrences)
        let count (needle: string) (text: string) = (text.Length - text.Replace(needle, "").Length) / needle.Length
        // One drawing call per figure, beyond any plotly.js makes itself.
        Assert.Equal(2, count "Plotly.newPlot(" html - count "Plotly.newPlot(" js)
        // Nothing is fetched: no script is loaded from elsewhere.
        Assert.DoesNotContain("<script src=", html)
        Assert.Contains("Alpha &amp; co", html)
        Assert.Contains("x &lt; y", html)
        for name in [ "alpha-one.png"; "alpha-two.png" ] do
            let bytes = File.ReadAllBytes(Path.Combine(dir, name))
            Assert.True(bytes.Length > 2000, $"{name} is only {bytes.Length} bytes")
            Assert.Equal<byte[]>([| 0x89uy; 0x50uy; 0x4Euy; 0x47uy |], bytes.[0..3])
        let dup = Assert.Throws<ArgumentException>(fun () -> Report.write dir "t" [ b; b ] |> ignore)
        Assert.Contains("share the id 'beta'", dup.Message)
    finally
        Directory.Delete(dir, true)

[<Fact>]
let ``results are JSON with non-finite numbers as null`` () =
    let dir = tempDir ()
    try
        let node = Report.obj [ "xs", Report.numbers [ 1.5; nan; infinity ]; "name", Report.text "t"; "n", Report.integer 3L ]
        let answer =
            { Question = "q?"; Verdict = "yes"; Evidence = "numbers"; KeyNumber = "1 [0, 2]"; Seeds = 5; Runs = 10; Converged = 9 }
        let path = Report.writeResults dir "demo" answer node
        use doc = JsonDocument.Parse(File.ReadAllText path)
        // The answer comes first, with the issue's three fields.
        let first = doc.RootElement.EnumerateObject() |> Seq.head
        Assert.Equal("answer", first.Name)
        for field, value in [ "question", "q?"; "verdict", "yes"; "evidence", "numbers" ] do
            Assert.Equal(value, first.Value.GetProperty(field).GetString())
        Assert.Equal(9, first.Value.GetProperty("converged").GetInt32())
        let xs = doc.RootElement.GetProperty "xs"
        Assert.Equal(1.5, xs.[0].GetDouble())
        Assert.Equal(JsonValueKind.Null, xs.[1].ValueKind)
        Assert.Equal(JsonValueKind.Null, xs.[2].ValueKind)
        Assert.Equal(3, (doc.RootElement.GetProperty "n").GetInt32())
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"))
    finally
        Directory.Delete(dir, true)

[<Fact>]
let ``the summary section has one row per experiment with its answer`` () =
    let a = { Question = "q?"; Verdict = "yes"; Evidence = "e"; KeyNumber = "k"; Seeds = 5; Runs = 40; Converged = 5 }
    let s = Report.summarySection [ "one", a; "two", { a with Verdict = "no" } ]
    Assert.Equal("summary", s.Id)
    let t = List.exactlyOne s.Tables
    Assert.Equal<string list list>([ [ "one"; "q?"; "yes"; "k"; "5"; "40"; "5" ]; [ "two"; "q?"; "no"; "k"; "5"; "40"; "5" ] ], t.Rows)
