/// Writes the report and the results files; the only place that knows where artifacts go.
module MechInterp.Analysis.Report.Report

open System.IO
open System.Text
open System.Text.Json
open System.Text.Json.Nodes

/// The PNG file name of a figure, unique across the report: "<section id>-<figure id>.png".
let pngName (section: ReportSection) (figure: Figure) = $"{section.Id}-{figure.Id}.png"

/// Renders sections into `dir`/index.html plus one PNG per figure; returns the page's path.
let write (dir: string) (title: string) (sections: ReportSection list) =
    let ids = sections |> List.map (fun s -> s.Id)
    match ids |> List.countBy id |> List.tryFind (fun (_, n) -> n > 1) with
    | Some(dup, _) -> invalidArg (nameof sections) $"two report sections share the id '{dup}'"
    | None -> ()
    Directory.CreateDirectory dir |> ignore
    for s in sections do
        for f in s.Figures do PngRender.write (Path.Combine(dir, pngName s f)) f
    let rendered = sections |> List.map (fun s -> s, Html.section PlotlyRender.figureHtml pngName s)
    let path = Path.Combine(dir, "index.html")
    MechInterp.IO.AtomicFile.WriteAllText(path, Html.page title (PlotlyRender.plotlyJs ()) rendered)
    path

/// The "answer" object every results file carries.
let answerJson (a: Answer) : JsonNode =
    let o = JsonObject()
    o.Add("question", JsonValue.Create a.Question)
    o.Add("verdict", JsonValue.Create a.Verdict)
    o.Add("evidence", JsonValue.Create a.Evidence)
    o.Add("key_number", JsonValue.Create a.KeyNumber)
    o.Add("seeds", JsonValue.Create a.Seeds)
    o.Add("runs", JsonValue.Create a.Runs)
    o.Add("converged", JsonValue.Create a.Converged)
    o :> JsonNode

/// Writes an experiment's numbers to `dir`/<name>.json, indented, its answer first as "answer"; NaN and
/// infinities become null.
let writeResults (dir: string) (name: string) (answer: Answer) (results: JsonNode) =
    let path = Path.Combine(dir, $"{name}.json")
    let top = JsonObject()
    top.Add("answer", answerJson answer)
    match results with
    | :? JsonObject as fields ->
        for KeyValue(key, value) in List.ofSeq fields do
            fields.Remove key |> ignore
            top.Add(key, value)
    | other -> top.Add("results", other)
    MechInterp.IO.AtomicFile.WriteAllText(path, top.ToJsonString(JsonSerializerOptions(WriteIndented = true)))
    path

/// The section the report opens with: every experiment's question, its answer, the key number, and its runs.
let summarySection (answers: (string * Answer) list) : ReportSection =
    { ReportSection.create "summary" "Answers" with
        Paragraphs =
            [ "Each experiment's question and its answer as computed from this run's numbers; the sections below hold the evidence. "
              + "Runs: seeds per arm, models trained in all, and how many converged (learned their task, then flat) under the step cap." ]
        Tables =
            [ { Title = "What each experiment found"
                Header = [ "experiment"; "question"; "answer"; "key number (95% interval)"; "seeds"; "runs"; "converged" ]
                Rows = [ for name, a in answers -> [ name; a.Question; a.Verdict; a.KeyNumber; string a.Seeds; string a.Runs; string a.Converged ] ] } ] }

/// A JSON number, or null where the value is not finite (JSON has no NaN).
let number (x: float) : JsonNode | null =
    if System.Double.IsFinite x then JsonValue.Create x :> JsonNode | null else null

/// A JSON array of numbers.
let numbers (xs: float seq) : JsonNode =
    JsonArray(xs |> Seq.map number |> Seq.toArray) :> JsonNode

/// A JSON object from fields in order.
let obj (fields: (string * (JsonNode | null)) list) : JsonNode =
    let o = JsonObject()
    for k, v in fields do o.Add(k, v)
    o :> JsonNode

/// A JSON array of nodes.
let array (xs: (JsonNode | null) seq) : JsonNode = JsonArray(Seq.toArray xs) :> JsonNode

/// A JSON string.
let text (s: string) : JsonNode = nonNull (JsonValue.Create s) :> JsonNode

/// A JSON integer.
let integer (i: int64) : JsonNode = JsonValue.Create i :> JsonNode
