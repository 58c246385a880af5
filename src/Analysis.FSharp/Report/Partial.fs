/// The JSON form of a work unit's partial result, as a shard writes it and `merge` reads it back: F# records,
/// unions, options, lists, maps, tuples and 2-D arrays; floats round-trip exactly, NaN and infinities as strings.
module MechInterp.Analysis.Report.Partial

open System
open System.Text.Json
open System.Text.Json.Nodes
open System.Text.Json.Serialization
open Microsoft.FSharp.Reflection

/// 'T[,] as { "rows", "cols", "data" (row-major) }, so an empty matrix keeps both sizes.
type private Array2DConverter<'T>() =
    inherit JsonConverter<'T[,]>()

    override _.Read(reader: byref<Utf8JsonReader>, _: Type, options: JsonSerializerOptions) =
        let node = JsonNode.Parse(&reader) |> nonNull
        let rows = node.["rows"] |> nonNull |> _.GetValue<int>()
        let cols = node.["cols"] |> nonNull |> _.GetValue<int>()
        let data = (node.["data"] |> nonNull).Deserialize<'T[]>(options) |> nonNull
        if data.Length <> rows * cols then
            raise (JsonException $"a {rows} × {cols} matrix holds {data.Length} values")
        Array2D.init rows cols (fun i j -> data.[i * cols + j])

    override _.Write(writer: Utf8JsonWriter, value: 'T[,], options: JsonSerializerOptions) =
        writer.WriteStartObject()
        writer.WriteNumber("rows", Array2D.length1 value)
        writer.WriteNumber("cols", Array2D.length2 value)
        writer.WritePropertyName "data"
        JsonSerializer.Serialize(writer, Seq.cast<'T> value |> Array.ofSeq, options)
        writer.WriteEndObject()

type private Array2DConverterFactory() =
    inherit JsonConverterFactory()
    override _.CanConvert(t: Type) = t.IsArray && t.GetArrayRank() = 2

    override _.CreateConverter(t: Type, _: JsonSerializerOptions) =
        let element = t.GetElementType() |> nonNull
        nonNull (Activator.CreateInstance(typedefof<Array2DConverter<_>>.MakeGenericType element)) :?> JsonConverter

/// A union value as { "case": name, "fields": [...] } (System.Text.Json reads records, options, lists and maps
/// itself, but not unions).
type private UnionConverter<'T>() =
    inherit JsonConverter<'T>()
    let cases = FSharpType.GetUnionCases(typeof<'T>, true)
    let fieldsOf = cases |> Array.map (fun c -> c.GetFields())
    let readers = cases |> Array.map (fun c -> FSharpValue.PreComputeUnionReader(c, true))
    let makers = cases |> Array.map (fun c -> FSharpValue.PreComputeUnionConstructor(c, true))
    let tagOf = FSharpValue.PreComputeUnionTagReader(typeof<'T>, true)

    override _.Write(writer: Utf8JsonWriter, value: 'T, options: JsonSerializerOptions) =
        let tag = tagOf (box value)
        writer.WriteStartObject()
        writer.WriteString("case", cases.[tag].Name)
        if fieldsOf.[tag].Length > 0 then
            writer.WritePropertyName "fields"
            writer.WriteStartArray()
            for field, v in Array.zip fieldsOf.[tag] (readers.[tag] (box value)) do
                JsonSerializer.Serialize(writer, v, field.PropertyType, options)
            writer.WriteEndArray()
        writer.WriteEndObject()

    override _.Read(reader: byref<Utf8JsonReader>, _: Type, options: JsonSerializerOptions) =
        let node = JsonNode.Parse(&reader) |> nonNull
        let name = node.["case"] |> nonNull |> _.GetValue<string>()
        match cases |> Array.tryFindIndex (fun c -> c.Name = name) with
        | None -> raise (JsonException $"{typeof<'T>.Name} has no case {name}")
        | Some tag ->
            let fields = fieldsOf.[tag]
            let values =
                match node.["fields"] with
                | null -> [||]
                | array -> array.AsArray() |> Seq.mapi (fun k n -> match n with null -> null | n -> n.Deserialize(fields.[k].PropertyType, options)) |> Array.ofSeq
            if values.Length <> fields.Length then
                raise (JsonException $"{typeof<'T>.Name}.{name} has {fields.Length} fields, the partial {values.Length}")
            nonNull (makers.[tag] values) :?> 'T

type private UnionConverterFactory() =
    inherit JsonConverterFactory()
    // Options and lists are unions too, and System.Text.Json already reads them.
    override _.CanConvert(t: Type) =
        FSharpType.IsUnion(t, true)
        && not (t.IsGenericType && (let d = t.GetGenericTypeDefinition() in d = typedefof<option<_>> || d = typedefof<list<_>> || d = typedefof<voption<_>>))

    override _.CreateConverter(t: Type, _: JsonSerializerOptions) =
        nonNull (Activator.CreateInstance(typedefof<UnionConverter<_>>.MakeGenericType t)) :?> JsonConverter

/// The serializer settings of every partial.
let options =
    let o = JsonSerializerOptions(NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals)
    o.Converters.Add(Array2DConverterFactory())
    o.Converters.Add(UnionConverterFactory())
    o

/// Any value as its partial JSON.
let toNode (value: 'T) : JsonNode = JsonNode.Parse(JsonSerializer.Serialize(value, options)) |> nonNull

/// A partial read back as the type that wrote it.
let ofNode<'T> (node: JsonNode) : 'T =
    match JsonSerializer.Deserialize<'T>(node.ToJsonString(options), options) with
    | null -> raise (JsonException $"a partial of {typeof<'T>.Name} is null")
    | value -> value
