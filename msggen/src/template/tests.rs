//! Tests of the language, construct by construct; examples follow
//! SparkPost's template-language reference.

use serde_json::{json, Value};

use super::*;

fn scope<'a>(layers: &'a [&'a Value]) -> Scope<'a> {
    Scope {
        layers,
        address_email: "wilma@flintstone.com",
        address_name: "Wilma",
        header_to: "list@flintstone.com",
        email_id: "wilma",
        env_from: "bounces@example.com",
        return_path: "rp@example.com",
    }
}

fn render_ctx(src: &str, data: &Value, ctx: Context) -> String {
    let t = Template::compile(src).unwrap_or_else(|e| panic!("{src:?}: {e}"));
    let mut out = Vec::new();
    t.render(&scope(&[data]), ctx, &mut out)
        .unwrap_or_else(|e| panic!("{src:?}: {e}"));
    String::from_utf8(out).unwrap()
}

fn html(src: &str, data: &Value) -> String {
    render_ctx(src, data, Context::Html)
}

fn text(src: &str, data: &Value) -> String {
    render_ctx(src, data, Context::Text)
}

fn compile_err(src: &str) -> TemplateError {
    Template::compile(src).expect_err(src)
}

fn render_err(src: &str, data: &Value) -> RenderError {
    let t = Template::compile(src).unwrap();
    let mut out = b"keep".to_vec();
    let e = t
        .render(&scope(&[data]), Context::Text, &mut out)
        .expect_err(src);
    assert_eq!(out, b"keep", "a failed render leaves the buffer as it was");
    e
}

#[test]
fn plain_text_is_copied() {
    assert_eq!(text("no tags here } { }", &json!({})), "no tags here } { }");
    assert!(Template::compile("static").unwrap().is_static());
    assert!(!Template::compile("{{x}}").unwrap().is_static());
    assert_eq!(text("", &json!({})), "");
}

#[test]
fn variables_escape_in_html_only() {
    let d = json!({"name": "<b>Tom & \"Jerry\"</b> '"});
    assert_eq!(
        html("Hi {{name}}", &d),
        "Hi &lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt; &#39;"
    );
    assert_eq!(text("Hi {{name}}", &d), "Hi <b>Tom & \"Jerry\"</b> '");
    assert_eq!(html("Hi {{{name}}}", &d), "Hi <b>Tom & \"Jerry\"</b> '");
    assert_eq!(
        html("{{ name }}|{{{ name }}}", &json!({"name": "a"})),
        "a|a"
    );
}

#[test]
fn sparkpost_layer_example_city() {
    // metadata < substitution_data, transmission < recipient.
    let tx_meta = json!({"city": "San Francisco", "only_tx_meta": 1});
    let tx_sub = json!({"city": "Seattle"});
    let rc_meta = json!({"city": "Baltimore"});
    let rc_sub = json!({"city": "New York"});
    let t = Template::compile("Hello, {{city}}! {{only_tx_meta}}").unwrap();
    let mut out = Vec::new();
    let layers = [&rc_sub, &rc_meta, &tx_sub, &tx_meta];
    t.render(&scope(&layers), Context::Html, &mut out).unwrap();
    assert_eq!(out, b"Hello, New York! 1");
    out.clear();
    let layers = [&rc_meta, &tx_sub, &tx_meta];
    t.render(&scope(&layers), Context::Html, &mut out).unwrap();
    assert_eq!(out, b"Hello, Baltimore! 1");
}

#[test]
fn layers_from_a_transmission() {
    // SparkPost's example: the recipient's substitution_data wins.
    let tx = json!({
        "metadata": {"city": "San Francisco", "plan": "tx-meta"},
        "substitution_data": {"city": "Seattle"},
    });
    let rcpt = json!({
        "address": "wilma@flintstone.com",
        "metadata": {"city": "Baltimore"},
        "substitution_data": {"city": "New York"},
    });
    let l = layers(&rcpt, &tx);
    let t = Template::compile("Hello, {{city}}! {{plan}}").unwrap();
    let mut out = Vec::new();
    t.render(&scope(&l), Context::Html, &mut out).unwrap();
    assert_eq!(out, b"Hello, New York! tx-meta");
    let bare = json!({});
    let l = layers(&bare, &tx);
    out.clear();
    t.render(&scope(&l), Context::Html, &mut out).unwrap();
    assert_eq!(out, b"Hello, Seattle! tx-meta");
}

#[test]
fn missing_values_render_empty() {
    assert_eq!(
        text("[{{nope}}][{{a.b.c}}][{{a[3]}}]", &json!({"a": 1})),
        "[][][]"
    );
    assert_eq!(text("[{{n}}]", &json!({"n": null})), "[]");
}

#[test]
fn values_print_naturally() {
    let d = json!({"i": 40, "f": 2.5, "neg": -3, "t": true, "f0": false,
                   "arr": [1, "x"], "obj": {"k": "v"}, "big": 12345678901234567u64});
    assert_eq!(
        text("{{i}} {{f}} {{neg}} {{t}} {{f0}}", &d),
        "40 2.5 -3 true false"
    );
    assert_eq!(text("{{arr}} {{obj}}", &d), "[1,\"x\"] {\"k\":\"v\"}");
    assert_eq!(html("{{arr}}", &d), "[1,&quot;x&quot;]");
    assert_eq!(text("{{big}}", &d), "12345678901234567");
}

#[test]
fn nested_paths_in_every_spelling() {
    let d = json!({
        "address": {"city": "ignored: address is reserved"},
        "user": {"address": {"city": "Bedrock"}, "pets": [{"name": "Dino"}, {"name": "Hoppy"}]},
        "odd key": "v",
    });
    assert_eq!(text("{{user.address.city}}", &d), "Bedrock");
    assert_eq!(text("{{user['address']['city']}}", &d), "Bedrock");
    assert_eq!(text("{{user[\"address\"].city}}", &d), "Bedrock");
    assert_eq!(
        text("{{user.pets[1].name}},{{user.pets[2].name}}", &d),
        "Dino,Hoppy"
    );
    assert_eq!(text("[{{user.pets[3].name}}]", &d), "[]");
}

#[test]
fn reserved_variables() {
    let d = json!({});
    assert_eq!(
        html("{{address.name}} <{{address.email}}> {{email}} {{email_id}} {{env_from}} {{return_path}} {{address.header_to}}", &d),
        "Wilma <wilma@flintstone.com> wilma@flintstone.com wilma bounces@example.com rp@example.com list@flintstone.com"
    );
    assert_eq!(text("{{address}}", &d), "wilma@flintstone.com");
    assert_eq!(text("[{{address.nope}}]", &d), "[]");
}

#[test]
fn defaults_with_or() {
    let d = json!({"name": "Clark", "empty": "", "f": false});
    assert_eq!(text("{{name or 'Customer'}}", &d), "Clark");
    assert_eq!(text("{{first or 'Customer'}}", &d), "Customer");
    assert_eq!(text("{{first or \"Customer\"}}", &d), "Customer");
    assert_eq!(text("{{f or 'no'}}", &d), "no");
    // Lua truthiness: the empty string is a value.
    assert_eq!(text("[{{empty or 'x'}}]", &d), "[]");
    assert_eq!(text("{{a or b or 'c'}}", &d), "c");
    assert_eq!(html("{{x or '<none>'}}", &d), "&lt;none&gt;");
}

#[test]
fn arithmetic() {
    let d = json!({"price": 20, "qty": 3, "half": 0.5, "s": "7"});
    assert_eq!(text("{{price - 5}}", &d), "15");
    assert_eq!(text("{{price * qty + 1}}", &d), "61");
    assert_eq!(text("{{price * (qty + 1)}}", &d), "80");
    assert_eq!(text("{{price / 8}}", &d), "2.5");
    assert_eq!(text("{{price * half}}", &d), "10");
    assert_eq!(text("{{-price}}", &d), "-20");
    assert_eq!(text("{{s + 1}}", &d), "8");
    assert_eq!(text("{{1.25 + 1}}", &d), "2.25");
    assert_eq!(text("{{10 - 2 - 3}}", &d), "5");
}

#[test]
fn arithmetic_errors_name_the_place() {
    let e = render_err("ok\n  {{price - 5}}", &json!({}));
    assert_eq!(
        e,
        RenderError::Type {
            line: 2,
            column: 3,
            what: "arithmetic on a value that is not a number"
        }
    );
    assert!(matches!(
        render_err("{{1 / 0}}", &json!({})),
        RenderError::Type {
            what: "division by zero",
            ..
        }
    ));
    assert!(matches!(
        render_err("{{if 'a' < 1}}x{{end}}", &json!({})),
        RenderError::Type {
            what: "comparison of incompatible values",
            ..
        }
    ));
}

#[test]
fn if_elseif_else() {
    let t = "{{if age > 60}}senior{{elseif age >= 18}}adult{{else}}minor{{end}}";
    assert_eq!(text(t, &json!({"age": 70})), "senior");
    assert_eq!(text(t, &json!({"age": 18})), "adult");
    assert_eq!(text(t, &json!({"age": 3})), "minor");
    // Missing: comparisons of nil fail, so guard first.
    let t2 = "{{if age and age > 60}}senior{{else}}?{{end}}";
    assert_eq!(text(t2, &json!({})), "?");
    assert_eq!(text("{{if x}}yes{{end}}.", &json!({})), ".");
}

#[test]
fn if_truthiness_is_luas() {
    let t = "{{if v}}T{{else}}F{{end}}";
    for (v, want) in [
        (json!(null), "F"),
        (json!(false), "F"),
        (json!(true), "T"),
        (json!(0), "T"),
        (json!(""), "T"),
        (json!([]), "T"),
        (json!({}), "T"),
        (json!("no"), "T"),
    ] {
        assert_eq!(text(t, &json!({"v": v})), want, "{v}");
    }
    assert_eq!(text(t, &json!({})), "F");
}

#[test]
fn comparisons_and_logic() {
    let d = json!({"state": "MD", "age": 40, "is_member": true, "n": null});
    let yes = |src: &str| text(&format!("{{{{if {src}}}}}y{{{{else}}}}n{{{{end}}}}"), &d);
    assert_eq!(yes("state == 'MD'"), "y");
    assert_eq!(yes("state != 'MD'"), "n");
    assert_eq!(yes("state ~= 'VA'"), "y");
    assert_eq!(yes("age == 40"), "y");
    assert_eq!(yes("age == 40.0"), "y");
    assert_eq!(yes("age == '40'"), "n");
    assert_eq!(
        yes("age < 41 and age <= 40 and age > 39 and age >= 40"),
        "y"
    );
    assert_eq!(yes("'abc' < 'abd'"), "y");
    assert_eq!(yes("is_member and state == 'MD'"), "y");
    assert_eq!(yes("not is_member or age > 100"), "n");
    assert_eq!(yes("not (is_member and age > 100)"), "y");
    assert_eq!(yes("n == nil"), "y");
    assert_eq!(yes("missing == nil"), "y");
    assert_eq!(yes("true"), "y");
    assert_eq!(yes("false"), "n");
}

#[test]
fn nested_ifs() {
    let t = "{{if a}}A{{if b}}B{{else}}b{{end}}{{elseif c}}C{{end}}";
    assert_eq!(text(t, &json!({"a": 1, "b": 1})), "AB");
    assert_eq!(text(t, &json!({"a": 1})), "Ab");
    assert_eq!(text(t, &json!({"c": 1})), "C");
    assert_eq!(text(t, &json!({})), "");
}

#[test]
fn each_with_loop_var_and_index() {
    let d = json!({"files": ["a.txt", "b.txt"]});
    assert_eq!(
        text("{{each files}}[{{loop_index}}:{{loop_var}}]{{end}}", &d),
        "[0:a.txt][1:b.txt]"
    );
    let d = json!({"orders": [{"id": 1, "total": 9.5}, {"id": 2, "total": 3}]});
    assert_eq!(
        html(
            "{{each orders}}<li>#{{loop_var.id}} {{loop_vars.orders.total}}</li>{{end}}",
            &d
        ),
        "<li>#1 9.5</li><li>#2 3</li>"
    );
}

#[test]
fn nested_each_uses_loop_vars() {
    let d = json!({
        "users": [
            {"name": "jane", "purchases": ["mango", "kiwi"]},
            {"name": "rob", "purchases": []},
            {"name": "ann", "purchases": ["fig"]},
        ]
    });
    let t = "{{each users}}{{loop_var.name}}:{{each loop_var.purchases}}{{loop_vars.users.name}}/{{loop_var}}@{{loop_index}} {{end}};{{end}}";
    assert_eq!(
        text(t, &d),
        "jane:jane/mango@0 jane/kiwi@1 ;rob:;ann:ann/fig@0 ;"
    );
}

#[test]
fn each_over_non_arrays_renders_nothing() {
    let t = "[{{each x}}{{loop_var}}{{end}}]";
    assert_eq!(text(t, &json!({})), "[]");
    assert_eq!(text(t, &json!({"x": "str"})), "[]");
    assert_eq!(text(t, &json!({"x": {"a": 1}})), "[]");
    assert_eq!(
        text("[{{loop_var}}{{loop_index}}{{loop_vars.x}}]", &json!({})),
        "[]"
    );
    assert_eq!(
        text(
            "{{each a.b[2]}}{{loop_var}}{{end}}",
            &json!({"a": {"b": [[1], [2, 3]]}})
        ),
        "23"
    );
}

#[test]
fn macros() {
    let d = json!({"cart": [], "full": [1], "s": "", "o": {}});
    assert_eq!(
        text("{{opening_double_curly()}}x{{closing_double_curly()}}", &d),
        "{{x}}"
    );
    let yes = |src: &str| text(&format!("{{{{if {src}}}}}y{{{{else}}}}n{{{{end}}}}"), &d);
    assert_eq!(yes("empty(cart)"), "y");
    assert_eq!(yes("empty(full)"), "n");
    assert_eq!(yes("empty(s)"), "y");
    assert_eq!(yes("empty(o)"), "y");
    assert_eq!(yes("empty(missing)"), "y");
    assert_eq!(yes("not empty(full)"), "y");
}

#[test]
fn render_dynamic_content() {
    let d = json!({
        "dynamic_html": {"member_link": "<a href=\"http://x/{{id}}\">{{name}}</a>"},
        "dynamic_plain": {"member_link": "See http://x/{{id}} {{name}}"},
        "id": 7, "name": "A&B",
        "bad": "{{if}}", "nested": "{{render_dynamic_content(dynamic_plain.member_link)}}",
    });
    assert_eq!(
        html(
            "<p>{{render_dynamic_content(dynamic_html.member_link)}}</p>",
            &d
        ),
        "<p><a href=\"http://x/7\">A&amp;B</a></p>"
    );
    assert_eq!(
        text("{{render_dynamic_content(dynamic_plain.member_link)}}", &d),
        "See http://x/7 A&B"
    );
    assert_eq!(
        text("[{{render_dynamic_content(dynamic_plain.nope)}}]", &d),
        "[]"
    );
    assert!(matches!(
        render_err("{{render_dynamic_content(bad)}}", &d),
        RenderError::DynamicContent(_)
    ));
    assert_eq!(
        render_err("{{render_dynamic_content(nested)}}", &d),
        RenderError::NestedDynamicContent
    );
    assert_eq!(
        compile_err("{{x or render_dynamic_content(y)}}").kind,
        TemplateErrorKind::DynamicNotWhole
    );
}

#[test]
fn compile_errors_have_line_and_column() {
    let e = compile_err("Hello\n  {{if x}}\n  never closed");
    assert_eq!((e.line, e.column), (2, 3));
    assert_eq!(e.kind, TemplateErrorKind::Unclosed("if"));
    assert_eq!(
        e.to_string(),
        "line 2, column 3: '{{if' without a matching '{{end}}'"
    );

    let e = compile_err("ab {{name");
    assert_eq!(
        (e.line, e.column, e.kind),
        (1, 4, TemplateErrorKind::UnclosedTag)
    );

    // Columns count characters: "é" is one.
    let e = compile_err("é\néé{{a +}}");
    assert_eq!((e.line, e.column), (2, 8));

    let e = compile_err("{{end}}");
    assert_eq!(e.kind, TemplateErrorKind::Unexpected("end".into()));
    let e = compile_err("{{if a}}{{else}}{{elseif b}}{{end}}");
    assert_eq!(
        (e.column, e.kind),
        (17, TemplateErrorKind::AfterElse("elseif".into()))
    );
    let e = compile_err("{{else}}");
    assert_eq!(e.kind, TemplateErrorKind::Unexpected("else".into()));
    let e = compile_err("{{each a + 1}}{{end}}");
    assert_eq!((e.column, e.kind), (8, TemplateErrorKind::EachNeedsPath));
    let e = compile_err("{{{if a}}}");
    assert_eq!(e.kind, TemplateErrorKind::StatementInRawTag);
    let e = compile_err("{{if a}}{{end x}}");
    assert_eq!(e.kind, TemplateErrorKind::TrailingWords("end".into()));
    let e = compile_err("{{ while }}");
    assert_eq!(
        (e.column, e.kind),
        (4, TemplateErrorKind::KeywordAsName("while".into()))
    );
    let e = compile_err("{{}}");
    assert_eq!(e.kind, TemplateErrorKind::EmptyExpression);
    let e = compile_err("{{a.b[0]}}");
    assert_eq!((e.column, e.kind), (7, TemplateErrorKind::BadSubscript));
    let e = compile_err("{{loop_vars}}");
    assert_eq!(e.kind, TemplateErrorKind::LoopVarsNeedsName);
    let e = compile_err("{{foo()}}");
    assert_eq!(e.kind, TemplateErrorKind::UnknownMacro("foo".into()));
}

#[test]
fn statement_words_need_a_boundary() {
    // `ifx`, `end_date`, `each_x` are variables, not statements.
    let d = json!({"ifx": 1, "end_date": "d", "each_x": "e", "elsewhere": "w"});
    assert_eq!(
        text("{{ifx}}{{end_date}}{{each_x}}{{elsewhere}}", &d),
        "1dew"
    );
}

#[test]
fn limits_are_enforced() {
    let limits = Limits {
        nesting_depth_max: 2,
        expression_bytes_max: 16,
        loop_iterations_max: 5,
        output_bytes_max: 10,
        template_bytes_max: 100,
        ..Limits::default()
    };
    let c = |s: &str| Template::compile_with(s, &limits);
    assert!(c("{{if a}}{{if b}}x{{end}}{{end}}").is_ok());
    let e = c("{{if a}}{{if b}}{{each c}}x{{end}}{{end}}{{end}}").unwrap_err();
    assert_eq!(
        (e.column, e.kind),
        (17, TemplateErrorKind::NestingTooDeep(2))
    );
    let e = c("{{aaaaaaaaaaaaaaaaaaaaaaaa}}").unwrap_err();
    assert_eq!(e.kind, TemplateErrorKind::ExpressionTooLong(16));
    let e = c(&"x".repeat(101)).unwrap_err();
    assert_eq!(e.kind, TemplateErrorKind::TemplateTooLong(100));

    let d = json!({"a": [1, 2, 3], "long": "0123456789A"});
    let sc = [&d];
    let mut out = Vec::new();
    let t = c("{{each a}}{{each a}}.{{end}}{{end}}").unwrap();
    assert_eq!(
        t.render(&scope(&sc), Context::Text, &mut out),
        Err(RenderError::TooManyIterations(5))
    );
    assert!(out.is_empty());
    let t = c("{{long}}").unwrap();
    assert_eq!(
        t.render(&scope(&sc), Context::Text, &mut out),
        Err(RenderError::OutputTooLong(10))
    );
    // Escaping counts: 4 '&' are 20 bytes.
    let d2 = json!({"amp": "&&&&"});
    let t = c("{{amp}}").unwrap();
    assert_eq!(
        t.render(&scope(&[&d2]), Context::Html, &mut out),
        Err(RenderError::OutputTooLong(10))
    );
    assert!(t.render(&scope(&[&d2]), Context::Text, &mut out).is_ok());
    assert_eq!(out, b"&&&&");
}

#[test]
fn render_appends_and_reuses_the_buffer() {
    let t = Template::compile("{{a}};").unwrap();
    let d = json!({"a": "x"});
    let mut out = b"head:".to_vec();
    t.render(&scope(&[&d]), Context::Text, &mut out).unwrap();
    t.render(&scope(&[&d]), Context::Text, &mut out).unwrap();
    assert_eq!(out, b"head:x;x;");
}

#[test]
fn template_is_shared_across_threads() {
    let t = std::sync::Arc::new(Template::compile("{{n * 2}}").unwrap());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || {
                let d = json!({"n": i});
                let mut out = Vec::new();
                t.render(&scope(&[&d]), Context::Text, &mut out).unwrap();
                String::from_utf8(out).unwrap()
            })
        })
        .collect();
    let got: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, ["0", "2", "4", "6"]);
}

fn pick<'a>(rng: &mut ecelerity_testkit::Rng, items: &[&'a str]) -> &'a str {
    items[rng.index(items.len())]
}

#[test]
fn random_templates_never_panic() {
    const PIECES: &[&str] = &[
        "{{",
        "}}",
        "{{{",
        "}}}",
        "if ",
        "elseif ",
        "else",
        "end",
        "each ",
        "a",
        "b.c",
        "[1]",
        "['k']",
        " or ",
        " and ",
        "not ",
        "+",
        "-",
        "*",
        "/",
        "(",
        ")",
        "==",
        "<",
        "'s'",
        "\"",
        "1",
        "2.5",
        "loop_var",
        "loop_index",
        "loop_vars.a",
        "empty(",
        "render_dynamic_content(d)",
        "text ",
        "\n",
        "é",
        "\\",
        ".",
        "{{a}}",
        "{{if a}}",
        "{{end}}",
        "{{each a}}",
        "{{else}}",
        "}",
    ];
    let d = json!({"a": [1, {"k": "v"}, [2]], "b": {"c": 3}, "k": "x", "d": "{{a}}{{if}}"});
    let limits = Limits {
        output_bytes_max: 4096,
        loop_iterations_max: 1000,
        ..Limits::default()
    };
    let mut rng = ecelerity_testkit::Rng::from_env_or_clock();
    let mut ok = 0;
    let mut out = Vec::new();
    for _ in 0..20_000 {
        let n = rng.range(1, 13);
        let mut src = String::new();
        for _ in 0..n {
            src.push_str(pick(&mut rng, PIECES));
        }
        if let Ok(t) = Template::compile_with(&src, &limits) {
            ok += 1;
            out.clear();
            for ctx in [Context::Text, Context::Html] {
                let _ = t.render(&scope(&[&d]), ctx, &mut out);
            }
        }
    }
    assert!(
        ok > 100,
        "the generator should make some valid templates ({ok})"
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = ecelerity_testkit::Rng::from_env_or_clock();
    for _ in 0..5_000 {
        let n = rng.index(64);
        let bytes: Vec<u8> = (0..n)
            .map(|_| b"{}()[]'\".ab1 +-*/<>=~!\\\n"[rng.index(24)])
            .collect();
        let src = String::from_utf8_lossy(&bytes);
        if let Ok(t) = Template::compile(&src) {
            let mut out = Vec::new();
            let _ = t.render(&scope(&[&json!({"a": 1})]), Context::Html, &mut out);
        }
    }
}

/// Counts this thread's heap allocations (tests run on several threads).
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised
// thread-local Cell (no allocation, no destructor).
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING_ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn rendering_into_a_warm_buffer_does_not_allocate() {
    let t = Template::compile(
        "<p>Hi {{first or 'there'}} {{address.name}}</p>{{if member and points > 100}}{{points / 100}}{{else}}-{{end}}\
         {{each items}}<li>{{loop_index + 1}} {{loop_var.name}} {{loop_var.qty * loop_var.price}} {{loop_vars.items.sku}}</li>{{end}}",
    )
    .unwrap();
    let d = json!({"first": "A<B", "member": true, "points": 1250, "items": [
        {"name": "x&y", "qty": 2, "price": 1.5, "sku": "S1"},
        {"name": "z", "qty": 1, "price": 3, "sku": "S2"},
    ]});
    let layers = [&d];
    let sc = scope(&layers);
    let mut out = Vec::with_capacity(4096);
    t.render(&sc, Context::Html, &mut out).unwrap();
    assert!(
        out.starts_with(b"<p>Hi A&lt;B Wilma</p>12.5<li>1 x&amp;y 3 S1</li>"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let before = ALLOCATIONS.with(|c| c.get());
    for _ in 0..100 {
        out.clear();
        t.render(&sc, Context::Html, &mut out).unwrap();
    }
    assert_eq!(ALLOCATIONS.with(|c| c.get()) - before, 0);
}
