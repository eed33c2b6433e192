//! Real model chat templates and the transformers Jinja environment: renderings transformers
//! produces, `raise_exception`, `tojson`, Python methods and output, content parts.

use minijinja::Value;

use crate::tokenizer::{ChatMessage, ChatTemplate, ChatTemplateArgs, TokenizerError};

/// meta-llama/Meta-Llama-3-8B-Instruct, tokenizer_config.json.
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// mistralai/Mistral-7B-Instruct-v0.2, tokenizer_config.json.
const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

/// Qwen/Qwen2-7B-Instruct, tokenizer_config.json.
const QWEN2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn args(tokens: &[(&str, &str)]) -> ChatTemplateArgs {
    ChatTemplateArgs {
        add_generation_prompt: true,
        special_tokens: tokens
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect(),
        ..ChatTemplateArgs::default()
    }
}

fn render(
    source: &str,
    messages: &[ChatMessage],
    args: &ChatTemplateArgs,
) -> Result<String, TokenizerError> {
    ChatTemplate::new(source, "<test>")?.render(messages, args)
}

fn messages(json: serde_json::Value) -> Vec<ChatMessage> {
    serde_json::from_value(json).expect("OpenAI-shaped messages")
}

#[test]
fn llama3_renders_headers_trims_content_and_adds_bos_once() {
    let conversation = [
        ChatMessage::new("system", "You are a bot."),
        ChatMessage::new("user", "  Hi\n"),
    ];
    let rendered = render(
        LLAMA3,
        &conversation,
        &args(&[("bos_token", "<|begin_of_text|>")]),
    )
    .expect("renders");
    assert_eq!(
        rendered,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a bot.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn mistral_renders_inst_blocks_and_raises_on_bad_roles() {
    let tokens = [("bos_token", "<s>"), ("eos_token", "</s>")];
    let conversation = [
        ChatMessage::new("user", "Hello"),
        ChatMessage::new("assistant", "Hi there"),
        ChatMessage::new("user", "How are you?"),
    ];
    let rendered = render(MISTRAL, &conversation, &args(&tokens)).expect("renders");
    assert_eq!(
        rendered,
        "<s>[INST] Hello [/INST]Hi there</s>[INST] How are you? [/INST]"
    );

    let bad = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    let err = render(MISTRAL, &bad, &args(&tokens)).unwrap_err();
    assert!(
        matches!(err, TokenizerError::TemplateRaised { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "Conversation roles must alternate user/assistant/user/assistant/..."
    );

    let err = render(MISTRAL, &[ChatMessage::new("system", "s")], &args(&tokens)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Conversation roles must alternate user/assistant/user/assistant/..."
    );
}

#[test]
fn qwen2_adds_its_default_system_prompt() {
    let rendered =
        render(QWEN2, &[ChatMessage::new("user", "Hello")], &args(&[])).expect("renders");
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
    let with_system = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hello"),
    ];
    let mut no_prompt = args(&[]);
    no_prompt.add_generation_prompt = false;
    let rendered = render(QWEN2, &with_system, &no_prompt).expect("renders");
    assert_eq!(
        rendered,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
    );
}

#[test]
fn trim_blocks_and_lstrip_blocks_are_on() {
    let source = "{% for message in messages %}\n    {% if message.role == 'user' %}\nU: {{ message.content }}\n    {% endif %}\n{% endfor %}";
    let rendered = render(source, &[ChatMessage::new("user", "Hi")], &args(&[])).expect("renders");
    assert_eq!(rendered, "U: Hi\n");
}

#[test]
fn tojson_is_python_json_dumps() {
    // From text, as the API layer gets it: serde_json's own maps would sort the keys.
    let conversation: Vec<ChatMessage> = serde_json::from_str(
        r#"[{"role": "assistant", "content": null, "tool_calls": [{"type": "function",
            "function": {"name": "f", "arguments": {"z": 1, "a": "é<&>", "l": [1.5, true, null]}}}]}]"#,
    )
    .expect("messages");
    let source = "{% for m in messages %}{{ m.tool_calls[0].function.arguments | tojson }}|{{ m.tool_calls[0].function.arguments | tojson(indent=2) }}|{{ m.content | tojson }}|{{ m.tool_calls[0].function | tojson(ensure_ascii=True, sort_keys=True, separators=[',', ':']) }}{% endfor %}";
    let rendered = render(source, &conversation, &args(&[])).expect("renders");
    assert_eq!(
        rendered,
        "{\"z\": 1, \"a\": \"é<&>\", \"l\": [1.5, true, null]}|\
         {\n  \"z\": 1,\n  \"a\": \"é<&>\",\n  \"l\": [\n    1.5,\n    true,\n    null\n  ]\n}|null|\
         {\"arguments\":{\"a\":\"\\u00e9<&>\",\"l\":[1.5,true,null],\"z\":1},\"name\":\"f\"}"
    );
}

#[test]
fn python_float_reprs_in_tojson_and_output() {
    let mut a = args(&[]);
    let floats = [0.1, 1e16, 1e15, 1.5e-7, 1e-4, 100.0, -0.0, f64::NAN];
    a.extra.push(("xs".into(), Value::from(floats.to_vec())));
    let rendered = render(
        "{{ xs | tojson }}|{{ xs[1] }}|{{ xs[5] }}|{{ xs[7] }}",
        &[],
        &a,
    )
    .expect("renders");
    assert_eq!(
        rendered,
        "[0.1, 1e+16, 1000000000000000.0, 1.5e-07, 0.0001, 100.0, -0.0, NaN]|1e+16|100.0|nan"
    );
}

#[test]
fn output_is_python_str() {
    let mut a = args(&[]);
    a.extra.push((
        "d".into(),
        serde_json::from_value::<Value>(serde_json::json!({"k": ["it's", 1]})).expect("a value"),
    ));
    let source =
        "{{ none }}|{{ true }}|{{ false }}|{{ [1, 'a'] }}|{{ d }}|{{ undefined_name }}|{{ tools }}";
    let rendered = render(source, &[], &a).expect("renders");
    assert_eq!(
        rendered,
        "None|True|False|[1, 'a']|{'k': [\"it's\", 1]}||None"
    );
}

#[test]
fn python_methods_loop_controls_and_generation_tags() {
    let conversation = [
        ChatMessage::new("user", "  a b  "),
        ChatMessage::new("assistant", "x"),
        ChatMessage::new("user", "y"),
    ];
    let source = "{% for m in messages %}{% if loop.index0 == 2 %}{% break %}{% endif %}{% if m.role == 'assistant' %}{% continue %}{% endif %}[{{ m.content.strip().split() | join(',') }}]{{ m.role.startswith('us') }}{% endfor %}\
                  {% for k, v in {'p': 1}.items() %}{{ k }}={{ v }}{% endfor %}\
                  {%- generation -%} G {%- endgeneration %}";
    let rendered = render(source, &conversation, &args(&[])).expect("renders");
    assert_eq!(rendered, "[a,b]Truep=1G");
}

#[test]
fn strftime_now_and_raise_exception_exist() {
    let rendered = render("{{ strftime_now('%Y') | length }}", &[], &args(&[])).expect("renders");
    assert_eq!(rendered, "4");
    assert_eq!(
        crate::tokenizer::python::strftime(
            "%Y-%m-%d %H:%M:%S %A %B %j %a %b %I %p %y %d %b %Y",
            1_709_210_096
        ),
        "2024-02-29 12:34:56 Thursday February 060 Thu Feb 12 PM 24 29 Feb 2024"
    );
    assert_eq!(
        crate::tokenizer::python::strftime("%d %B %Y", 0),
        "01 January 1970"
    );
}

#[test]
fn text_parts_join_for_string_templates_and_pass_through_for_part_templates() {
    let conversation = messages(serde_json::json!([
        {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}
    ]));
    let rendered = render(QWEN2, &conversation, &args(&[])).expect("renders");
    assert!(
        rendered.contains("<|im_start|>user\nHello<|im_end|>"),
        "{rendered}"
    );

    let parts_template = "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}{% for part in m['content'] %}{{ part['type'] }}:{{ part['text'] }}|{% endfor %}{% endif %}{% endfor %}";
    let template = ChatTemplate::new(parts_template, "<test>").expect("compiles");
    assert!(template.expects_content_parts());
    assert_eq!(
        template.render(&conversation, &args(&[])).expect("renders"),
        "text:Hel|text:lo|"
    );

    let image = messages(serde_json::json!([
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}
    ]));
    let err = render(QWEN2, &image, &args(&[])).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::UnsupportedContent { part_type, .. } if part_type == "image_url"),
        "{err:?}"
    );
}

#[test]
fn keyword_arguments_override_special_tokens_and_tools_default_to_none() {
    let mut a = args(&[("bos_token", "<s>")]);
    a.extra.push(("bos_token".into(), Value::from("<B>")));
    a.extra.push(("enable_thinking".into(), Value::from(false)));
    let source = "{{ bos_token }}{% if tools is none %}N{% endif %}{% if documents is none %}D{% endif %}{% if not enable_thinking %}T{% endif %}";
    assert_eq!(render(source, &[], &a).expect("renders"), "<B>NDT");
}

#[test]
fn messages_round_trip_through_serde() {
    let conversation = messages(serde_json::json!([
        {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "calc"}
    ]));
    let source = "{% for m in messages %}{{ m.role }}:{{ m.content }}:{{ m.tool_call_id }}:{{ m.name }}{% endfor %}";
    assert_eq!(
        render(source, &conversation, &args(&[])).expect("renders"),
        "tool:42:c1:calc"
    );
    let json = serde_json::to_value(&conversation).expect("serializes");
    assert_eq!(json[0]["tool_call_id"], "c1");
}
