/* Standalone probe, not part of the build.
 * The f16 1x8 tile on the `Panels` layout with `prefetcht0`/`t1`/`t2`/`nta` at several
 * distances ahead, against none (docs/BENCHMARKS.md, Zen 4).
 *
 *     gcc -O3 -march=znver3 benches/probes/panel_prefetch.c -o /tmp/panel_prefetch && /tmp/panel_prefetch
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#ifndef K
#define K 1024
#endif
static float X[K] __attribute__((aligned(64)));
volatile float sink;
static inline void pf(const char*p,int hint){switch(hint){case 0:_mm_prefetch(p,_MM_HINT_T0);break;case 1:_mm_prefetch(p,_MM_HINT_T1);break;case 2:_mm_prefetch(p,_MM_HINT_T2);break;default:_mm_prefetch(p,_MM_HINT_NTA);}}
static float panels16(const uint16_t*w,size_t np,int dist,int hint){__m256 acc[8];float tot=0;
 for(size_t q=0;q<np;q++){const uint16_t*p=w+q*8*K;for(int j=0;j<8;j++)acc[j]=_mm256_setzero_ps();
  for(int c=0;c<K;c+=16){const uint16_t*ch=p+c*8;__m256 x0=_mm256_load_ps(X+c),x1=_mm256_load_ps(X+c+8);
   if(dist){const char*b=(const char*)ch+dist;pf(b,hint);pf(b+64,hint);pf(b+128,hint);pf(b+192,hint);}
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x0,_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ch+j*16))),acc[j]);
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x1,_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ch+j*16+8))),acc[j]);}
  for(int j=1;j<8;j++)acc[0]=_mm256_add_ps(acc[0],acc[j]);float o[8];_mm256_storeu_ps(o,acc[0]);tot+=o[0];}
 return tot;}
int main(){size_t bytes=(size_t)512<<20;char*buf=mmap(0,bytes,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);madvise(buf,bytes,MADV_HUGEPAGE);
 for(size_t i=0;i<bytes;i+=8)*(uint64_t*)(buf+i)=0x3c003c003c003c00ull;for(int i=0;i<K;i++)X[i]=1.0f/(i+1);
 struct{int d,h;}cfg[]={{0,0},{256,0},{512,0},{1024,0},{2048,0},{8192,0},{1024,1},{4096,1},{16384,2},{2048,3}};int C=10;double best[16]={0};
 size_t np=bytes/2/(8*K);
 for(int it=0;it<5;it++)for(int c=0;c<C;c++){double t0=now();sink+=panels16((uint16_t*)buf,np,cfg[c].d,cfg[c].h);double g=bytes/(now()-t0)/1e9;if(g>best[c])best[c]=g;}
 for(int c=0;c<C;c++)printf("dist %5d hint %d: %.1f\n",cfg[c].d,cfg[c].h,best[c]);}
