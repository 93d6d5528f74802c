//! `#[derive(Wire)]` for corepool: the derive macro that lets your own
//! structs and enums cross between processes without wrappers. Use it through
//! the `corepool` crate (`corepool::Wire` names both the trait and this macro).

// Doc examples that build a pool need their own `main` starting with
// `corepool::init()`: workers re-execute the doctest binary.
#![allow(clippy::needless_doctest_main)]

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DataEnum, DeriveInput, Fields, GenericParam, LitStr, Path, Type};

/// Implements `corepool::Wire` for a struct or an enum whose fields are all
/// `Wire`, so that values of it can be task arguments and results, be sent
/// through a `Queue` or a `Pipe`, and so on.
///
/// ```
/// use corepool::{Pool, Wire};
///
/// #[derive(Debug, PartialEq, Wire)]
/// struct Order {
///     id: u64,
///     items: Vec<String>,
///     rush: bool,
/// }
///
/// #[derive(Debug, PartialEq, Wire)]
/// enum Status {
///     Queued,
///     Shipped { tracking: String },
///     Refused(u32),
/// }
///
/// fn handle(order: Order) -> Status {
///     match (order.rush, order.items.len()) {
///         (_, 0) => Status::Refused(0),
///         (true, _) => Status::Shipped { tracking: format!("T{}", order.id) },
///         (false, _) => Status::Queued,
///     }
/// }
///
/// fn main() -> corepool::Result<()> {
///     corepool::init(); // first statement of main: workers start here
///     let pool = Pool::new(2)?;
///     let order = Order { id: 7, items: vec!["book".into()], rush: true };
///     let status = pool.apply(handle, order)?;
///     assert_eq!(status, Status::Shipped { tracking: "T7".into() });
///     Ok(())
/// }
/// ```
///
/// # What it generates
///
/// * A struct (named, tuple or unit) is its fields' encodings one after
///   another, in declaration order: no names, no padding, no framing.
/// * An enum is a tag, the index of the variant in declaration order (a `u8`,
///   or a `u32` for an enum of more than 256 variants), then that variant's
///   fields. Decoding a tag with no variant is an `Error::Decode`, never a
///   panic; so is any other malformed input.
/// * Every type parameter gets a `Wire` bound: `struct Pair<T> { a: T, b: T }`
///   is `Wire` when `T` is.
/// * Each value of a derived type is one level of nesting: a value nested
///   more than 128 levels deep (a long chain of a recursive type) is refused
///   with `Error::Encode` by its sender and `Error::Decode` by its receiver,
///   instead of overflowing the stack of the thread decoding it (see
///   "How deep a value may nest" on the `Wire` trait).
///
/// Both ends of the wire are always the same binary (workers re-execute the
/// parent), so the format needs no versioning: reorder fields freely.
///
/// A field whose type is not `Wire` is reported on that field. Wrap it in
/// `corepool::Serde` (serde types) or `corepool::Plain` (`bytemuck::Pod`
/// types), or derive `Wire` for it too. Types that borrow (a lifetime
/// parameter) and unions are refused: values are copied into another
/// process, so they must own their data and say which field is live.
///
/// # Re-exports
///
/// The generated code names the library as `::corepool`. A crate that uses
/// corepool under another path (through a re-export) says where:
///
/// ```
/// # use corepool as my_runtime; // stands for a crate re-exporting corepool
/// #[derive(my_runtime::Wire)]
/// #[wire(crate = "my_runtime")]
/// struct Point(f64, f64);
/// ```
#[proc_macro_derive(Wire, attributes(wire))]
pub fn derive_wire(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The signature of the generated `encode`, in this one place: when the
/// trait's signature changes, this is the line to change.
fn encode_signature(krate: &Path) -> TokenStream {
    quote!(fn encode(&self, out: &mut #krate::Encoder))
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let krate = crate_path(&input.attrs)?;
    refuse_stray_attributes(input)?;
    let (encode_body, decode_body) = match &input.data {
        Data::Struct(data) => struct_bodies(&krate, &data.fields),
        Data::Enum(data) => enum_bodies(&krate, data),
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span,
                "`#[derive(Wire)]` does not support unions: the encoding cannot tell which \
                 field is live. Use an enum, or `corepool::Plain` if the union is `bytemuck::Pod`",
            ))
        }
    };
    let mut generics = input.generics.clone();
    for param in &generics.params {
        if let GenericParam::Lifetime(lifetime) = param {
            return Err(syn::Error::new(
                lifetime.span(),
                "`#[derive(Wire)]` needs a type that owns its data: values are copied into \
                 another process, so they cannot borrow. Use owned fields (`String`, `Vec<T>`)",
            ));
        }
    }
    let bounds: Vec<_> = generics
        .type_params()
        .map(|param| {
            let ident = &param.ident;
            quote!(#ident: #krate::Wire)
        })
        .collect();
    let where_clause = generics.make_where_clause();
    for bound in bounds {
        where_clause.predicates.push(syn::parse2(bound)?);
    }
    let (impl_generics, type_generics, where_clause) = generics.split_for_impl();
    let name = &input.ident;
    let encode_signature = encode_signature(&krate);
    // Each value of a derived type is one level of nesting, counted while
    // it is encoded (see `counted_encode`) or decoded: a value nested deeper
    // than corepool's limit (a long recursive chain, or forged bytes) fails
    // with an error instead of overflowing the stack of the thread decoding
    // it.
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Wire for #name #type_generics #where_clause {
            #encode_signature {
                #encode_body
            }

            fn decode(input: &mut &[u8]) -> #krate::Result<Self> {
                let _corepool_level = #krate::Encoder::__enter_decode_level::<Self>()?;
                #decode_body
            }
        }
    })
}

/// The path of the corepool crate: `::corepool`, or what
/// `#[wire(crate = "...")]` says.
fn crate_path(attrs: &[Attribute]) -> syn::Result<Path> {
    let mut path = None;
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("wire")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let literal: LitStr = meta.value()?.parse()?;
                path = Some(literal.parse::<Path>()?);
                Ok(())
            } else {
                Err(meta.error(
                    "unknown `wire` attribute: the only one is `#[wire(crate = \"path::to::corepool\")]`",
                ))
            }
        })?;
    }
    Ok(path.unwrap_or_else(|| syn::parse_quote!(::corepool)))
}

/// `#[wire(...)]` belongs on the type only; on a field or a variant it would
/// be silently ignored, so it is an error.
fn refuse_stray_attributes(input: &DeriveInput) -> syn::Result<()> {
    let fields: Vec<&syn::Field> = match &input.data {
        Data::Struct(data) => data.fields.iter().collect(),
        Data::Enum(data) => data.variants.iter().flat_map(|v| &v.fields).collect(),
        Data::Union(data) => data.fields.named.iter().collect(),
    };
    let variants = match &input.data {
        Data::Enum(data) => data.variants.iter().map(|v| &v.attrs).collect(),
        _ => Vec::new(),
    };
    let stray = fields
        .iter()
        .map(|f| &f.attrs)
        .chain(variants)
        .flatten()
        .find(|attr| attr.path().is_ident("wire"));
    match stray {
        Some(attr) => Err(syn::Error::new_spanned(
            attr,
            "`#[wire(...)]` goes on the type, not on a field or a variant",
        )),
        None => Ok(()),
    }
}

/// `<Type as Wire>::method`, spanned on the field's type so that a field that
/// is not `Wire` is reported there.
fn wire_call(krate: &Path, ty: &Type, method: &str) -> TokenStream {
    let method = format_ident!("{}", method);
    quote_spanned!(ty.span()=> <#ty as #krate::Wire>::#method)
}

/// An `encode` body inside one level of nesting, counted in the encoder:
/// a value nested deeper than a receiver decodes fails with
/// `Error::Encode` before it is sent.
fn counted_encode(krate: &Path, body: TokenStream) -> TokenStream {
    quote! {
        if !#krate::Encoder::__enter_level::<Self>(out) {
            return;
        }
        #body
        #krate::Encoder::__leave_level(out);
    }
}

fn struct_bodies(krate: &Path, fields: &Fields) -> (TokenStream, TokenStream) {
    let encodes = fields.iter().enumerate().map(|(index, field)| {
        let encode = wire_call(krate, &field.ty, "encode");
        let member = match &field.ident {
            Some(ident) => quote!(#ident),
            None => {
                let index = syn::Index::from(index);
                quote!(#index)
            }
        };
        quote!(#encode(&self.#member, out);)
    });
    // A struct without fields reads nothing.
    let unused_input = fields.is_empty().then(|| quote!(let _ = &input;));
    let construct = construct(krate, fields);
    let encode_body = counted_encode(krate, quote!(#(#encodes)*));
    let decode_body = quote! {
        #unused_input
        ::core::result::Result::Ok(Self #construct)
    };
    (encode_body, decode_body)
}

/// The part of a struct or variant expression after its name, each field
/// decoded in order: `{ a: .., b: .. }`, `(.., ..)` or nothing.
fn construct(krate: &Path, fields: &Fields) -> TokenStream {
    let decodes = fields.iter().map(|field| {
        let decode = wire_call(krate, &field.ty, "decode");
        let value = quote!(#decode(input)?);
        match &field.ident {
            Some(ident) => quote!(#ident: #value),
            None => value,
        }
    });
    match fields {
        Fields::Named(_) => quote!({ #(#decodes),* }),
        Fields::Unnamed(_) => quote!(( #(#decodes),* )),
        Fields::Unit => TokenStream::new(),
    }
}

fn enum_bodies(krate: &Path, data: &DataEnum) -> (TokenStream, TokenStream) {
    let count = data.variants.len();
    // One byte covers all but the largest enums; the format only has to
    // agree with itself (both ends are the same binary).
    let wide = count > 256;
    let tag_type = if wide { quote!(u32) } else { quote!(u8) };
    let tag = |index: usize| {
        if wide {
            Literal::u32_suffixed(index as u32)
        } else {
            Literal::u8_suffixed(index as u8)
        }
    };
    let encode_arms = data.variants.iter().enumerate().map(|(index, variant)| {
        let name = &variant.ident;
        let tag = tag(index);
        let bindings: Vec<_> = (0..variant.fields.len())
            .map(|i| format_ident!("__field{}", i))
            .collect();
        let pattern = match &variant.fields {
            Fields::Named(named) => {
                let names = named.named.iter().map(|f| &f.ident);
                quote!({ #(#names: #bindings),* })
            }
            Fields::Unnamed(_) => quote!(( #(#bindings),* )),
            Fields::Unit => TokenStream::new(),
        };
        let encodes = variant
            .fields
            .iter()
            .zip(&bindings)
            .map(|(field, binding)| {
                let encode = wire_call(krate, &field.ty, "encode");
                quote!(#encode(#binding, out);)
            });
        quote! {
            Self::#name #pattern => {
                <#tag_type as #krate::Wire>::encode(&#tag, out);
                #(#encodes)*
            }
        }
    });
    let decode_arms = data.variants.iter().enumerate().map(|(index, variant)| {
        let name = &variant.ident;
        let tag = tag(index);
        let fields = construct(krate, &variant.fields);
        quote!(#tag => ::core::result::Result::Ok(Self::#name #fields),)
    });
    let encode_body = if count == 0 {
        // No value of an enum without variants exists to be encoded.
        quote!(match *self {})
    } else {
        counted_encode(krate, quote!(match self { #(#encode_arms)* }))
    };
    let decode_body = quote! {
        match <#tag_type as #krate::Wire>::decode(input)? {
            #(#decode_arms)*
            unknown => ::core::result::Result::Err(#krate::Error::Decode {
                type_name: ::core::any::type_name::<Self>(),
                reason: ::std::format!(
                    "variant tag {} is not one of the {} variants: the sender is corrupt",
                    unknown,
                    #count,
                ),
            }),
        }
    };
    (encode_body, decode_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(input: TokenStream) -> String {
        let input: DeriveInput = syn::parse2(input).unwrap();
        expand(&input).unwrap().to_string()
    }

    #[test]
    fn small_enums_take_a_byte_of_tag_and_large_ones_four() {
        let small = expand_str(quote!(
            enum E {
                A,
                B(u8),
            }
        ));
        assert!(
            small.contains("< u8 as :: corepool :: Wire > :: decode"),
            "{small}"
        );
        let variants = (0..257usize).map(|i| format_ident!("V{}", i));
        let large = expand_str(quote!(enum E { #(#variants),* }));
        assert!(large.contains("< u32 as :: corepool :: Wire > :: decode"));
        assert!(large.contains("256u32"));
    }

    #[test]
    fn type_parameters_get_wire_bounds_and_the_crate_path_is_followed() {
        let out = expand_str(quote! {
            #[wire(crate = "my::corepool")]
            struct Pair<T, const N: usize> where T: Clone { a: [T; N] }
        });
        assert!(
            out.contains("T : Clone , T : my :: corepool :: Wire"),
            "{out}"
        );
        assert!(
            out.contains("impl < T , const N : usize > my :: corepool :: Wire for Pair < T , N >")
        );
        assert!(out.contains("-> my :: corepool :: Result < Self >"));
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        for input in [
            quote!(union U { a: u8 }),
            quote!(
                struct S<'a>(&'a u8);
            ),
            quote!(
                #[wire(krate = "x")]
                struct S;
            ),
            quote!(
                #[wire(crate = "not a path")]
                struct S;
            ),
            quote!(
                enum E {
                    #[wire(crate = "x")]
                    A,
                }
            ),
        ] {
            let input: DeriveInput = syn::parse2(input).unwrap();
            assert!(expand(&input).is_err());
        }
    }
}
